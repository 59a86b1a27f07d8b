"""What ships with a model is the serving package and its small base, found by reading imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

from pipeline.serving import shipping


def test_serving_imports_nothing_of_the_pipeline_but_its_named_base():
    """A new import of config, tracking or a stage would ship the training pipeline: fails here."""
    assert shipping.base_modules() == ["cam", "dicom", "environment", "files", "images", "layers"]


def test_the_staged_package_serves_alone_without_the_projects_own_modules(tmp_path):
    staged = shipping.stage_package(tmp_path)
    probe = (
        "import json, sys; import pipeline.serving.classifier, pipeline.serving.app; "
        "print(json.dumps({m: getattr(sys.modules[m], '__file__', '') for m in sys.modules "
        "if m == 'pipeline' or m.startswith('pipeline.')}))"
    )
    # -S: no site processing, so the project's editable install (a .pth import hook) is not
    # there; the installed libraries come from site-packages named explicitly, after the copy
    path = os.pathsep.join([str(tmp_path), sysconfig.get_paths()["purelib"]])
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded
    assert all(path.startswith(str(staged)) for path in loaded.values()), loaded
    assert (staged / "serving" / "static" / "index.html").is_file()
