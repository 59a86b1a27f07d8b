"""The wheel works away from the source tree: `pip install busi-pipeline` (not editable) must carry
the page and its assets, every module a stage or a surface imports, and start the service's CLI.

The wheel is built once per module with uv, from the sdist as a release would be (its build
environment comes from uv's cache), and installed with its `serve` extra into a fresh venv; the
commands run from tmp_path, so nothing of the repository is importable but through the wheel.
"""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.dvc_stages import resolved_stages
from tests.unit.test_wiring import pipeline_imports

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
# The commands a user runs beside the DVC stages (Makefile verbs, the Azure scoring glue, pyfunc).
SURFACES = (
    "pipeline.serve",
    "pipeline.predict",
    "pipeline.monitor",
    "pipeline.promote",
    "pipeline.package",
    "pipeline.export",
    "pipeline.serving.pyfunc",
    "pipeline.serving.pyfunc_model",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the files git would commit: the checkout's own build leftovers
    (an editable install's egg-info lists files of earlier builds) must not fill gaps."""
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([UV, "build", "--quiet", "--out-dir", out, source], check=True, timeout=300)
    (built,) = out.glob("busi_pipeline-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel (with the service's extra) and its dependencies only."""
    env = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, env], check=True)
    python = env / "bin" / "python"
    subprocess.run(
        [UV, "pip", "install", "--quiet", "--python", python, f"{wheel}[serve]"],
        check=True,
        timeout=600,
    )
    return python


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_the_wheel_carries_the_page_and_every_asset_it_links(wheel):
    files = wheel_files(wheel)
    static = "pipeline/serving/static/"
    assert {f"{static}index.html", f"{static}docs.html"} <= files
    for page in ("index.html", "docs.html"):
        html = (ROOT / static / page).read_text()
        linked = re.findall(r'(?:src|href)="/static/([^"]+)"', html)
        assert linked, f"{page} links no asset under /static/"
        assert {f"{static}{name}" for name in linked} <= files


def test_the_wheel_carries_every_module_a_stage_or_a_surface_imports(wheel):
    stages = resolved_stages()
    entry = {re.search(r"python -m (pipeline[.\w]+)", s["cmd"]).group(1) for s in stages.values()}
    needed: set[str] = set()
    for module in entry | set(SURFACES):
        needed |= {str(Path(p).relative_to(ROOT)) for p in pipeline_imports(module)}
    assert len(needed) > 30
    assert needed - wheel_files(wheel) == set()


def test_the_service_cli_runs_from_a_venv_holding_only_the_wheel(venv, tmp_path):
    where = subprocess.run(
        [venv, "-c", "import pipeline.serving.app as a; print(a.STATIC_DIR / 'index.html')"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_file()
    assert not Path(where).is_relative_to(ROOT)
    done = subprocess.run(
        [venv, "-m", "pipeline.serve", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--model" in done.stdout
