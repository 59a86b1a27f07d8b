"""The whole pipeline, for real: `dvc repro` in a fresh git repo on tiny parameters.

One run of every stage (demo data -> prepare -> augment -> both trainings -> evaluate -> select
-> external), then the checks a user would make: outputs, metrics, MLflow runs, the registered
alias, a second `dvc repro` that has nothing to do, and external validation: the demo's second
site reported, then copies of development images planted in another site, left out and listed,
re-running the external stage only.
"""

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import f1_score

from pipeline import ledger, metrics, synthetic
from pipeline.datasets import load_set
from pipeline.serving.classifier import load_classifier
from pipeline.serving.rule import OUT_OF_SCOPE
from tests.browsers import block_network
from tests.dvc_stages import resolved_stages
from tests.factories import left_out_pairs
from tests.repos import BIN, GIT, sh, tiny_repo
from tests.servers import free_port, running

pytestmark = pytest.mark.slow
ARCH_NAMES = ("densenet121", "resnet50")

SITES = {
    "external": [
        {
            "name": "synthetic-site-b",
            "path": "data/external/synthetic-site-b",
            "group_column": None,
        },
        {"name": "planted", "path": "data/external/planted", "group_column": None},
    ]
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project's tracked and new files in a new git repo, with tiny params and a
    second external site of a few images of its own (copies are planted in it later)."""
    repo, env = tiny_repo(tmp_path_factory.mktemp("repo"), {"data": SITES})
    synthetic.generate_site(repo / "data/external/planted", 12, 48, seed=7)
    log = sh("dvc", "repro", cwd=repo, env=env)
    return repo, env, log


def test_every_stage_ran_and_locked(repo):
    path, _, log = repo
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(resolved_stages(path))
    assert {"train@densenet121", "train@resnet50", "evaluate", "select"} <= set(lock["stages"])


def test_a_second_repro_has_nothing_to_do(repo):
    path, env, _ = repo
    out = sh("dvc", "status", cwd=path, env=env)
    assert "up to date" in out, out


def test_serving_the_release_leaves_nothing_for_dvc_to_run(repo, tmp_path):
    """The release carries model.onnx from select, and every serving command only reads it: the
    service and the batch scorer on ONNX Runtime and on Keras, and `make export-onnx` on it."""
    path, env, _ = repo
    release = path / "models" / "selected"
    assert json.loads((release / "release.json").read_text())["onnx"]["served"] == "model.onnx"
    scans = tmp_path / "scans"
    scans.mkdir()
    for image in sorted((path / "data" / "prepared").rglob("*.png"))[:3]:
        shutil.copy(image, scans / image.name)
    python = str(BIN / "python")
    for engine in ("auto", "keras"):
        out = tmp_path / f"{engine}.csv"
        sh(python, "-m", "pipeline.predict", str(scans), "--model", "models/selected",
           "--engine", engine, "--out", str(out), cwd=path, env=env)  # fmt: skip
        assert len(out.read_text().splitlines()) == 4
    assert "select exports every release" in sh(
        python, "-m", "pipeline.export", "models/selected", cwd=path, env=env
    )
    port = free_port()
    command = [python, "-m", "pipeline.serve", "--model", "models/selected", "--engine", "onnx"]
    command += ["--port", str(port), "--no-log"]
    url = f"http://127.0.0.1:{port}"
    with running(command, url + "/health", tmp_path / "serve.log", env=env, cwd=path):
        body = (scans / sorted(p.name for p in scans.iterdir())[0]).read_bytes()
        request = urllib.request.Request(url + "/predict", body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
    out = sh("dvc", "status", cwd=path, env=env)
    assert "up to date" in out, out


def test_outputs_metrics_and_plots_are_where_the_readme_says(repo):
    path, env, _ = repo
    for name in [
        "data/prepared/manifest.csv",
        "data/augmented/manifest.csv",
        "models/trained/densenet121/model.keras",
        "models/trained/resnet50/model.keras",
        "models/selected/model.keras",
        "reports/data/summary.json",
        "reports/evaluate/comparison.md",
        "reports/selection.json",
        "reports/model_card.md",
    ]:
        assert (path / name).is_file(), name
    for arch in ("densenet121", "resnet50"):
        metrics = json.loads((path / f"reports/evaluate/models/{arch}/metrics.json").read_text())
        for split in ("val", "test"):
            f1 = metrics[split]["macro_f1"]
            assert f1["ci_low"] <= f1["value"] <= f1["ci_high"]
        assert any((path / f"reports/evaluate/models/{arch}/figures").glob("*.png"))
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=path, env=env))
    (workspace,) = shown.values()
    (headline,) = [f["data"] for f in workspace["data"].values()]  # one metrics file
    assert set(headline) == {"densenet121", "resnet50"}
    assert all(set(v) == {"f1", "sens", "spec", "auc"} for v in headline.values())
    # README "Where test figures are": what `dvc metrics show` prints is validation only
    assert "test" not in sh("dvc", "metrics", "show", cwd=path, env=env).lower()
    looks = ledger.read_looks(path / ledger.LEDGER_FILE)  # one look per model, evaluate's report
    models = {ledger.file_sha256(str(path / f"models/trained/{a}/model.keras")) for a in ARCH_NAMES}
    ours = [r for r in looks if r["model_sha256"] in models]
    external = [r for r in ours if r["purpose"].startswith("external: ")]  # the release's, per site
    sites = sorted(f"external: {site['name']}" for site in SITES["external"])
    assert sorted(r["purpose"] for r in external) == sites
    ours = [r for r in ours if r not in external]
    assert sorted(r["purpose"] for r in ours) == ["evaluate: test report"] * 2
    assert "SYNTHETIC" in (path / "reports/model_card.md").read_text().upper()


def test_dvc_plots_show_the_training_history_of_both_models_in_one_chart(repo):
    """Declared once by evaluate (dvc.yaml names no backbone): every model's accuracy, loss and
    validation macro-F1 (what early stopping follows) per epoch, in one chart; each model's
    curves.png is MLflow's, not a plot."""
    path, env, _ = repo
    result = subprocess.run(
        ["dvc", "plots", "show", "--json"], cwd=path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    plots = json.loads(result.stdout)["data"]
    (curves,) = plots["reports/evaluate/plots/training_curves.csv"]
    values = curves["content"]["data"]["values"]
    for arch in ARCH_NAMES:
        f1 = [r for r in values if r["model"] == arch and r["metric"] == "macro-F1"]
        assert [int(row["epoch"]) for row in f1] == list(range(1, len(f1) + 1))
        assert all(0.0 <= float(row["value"]) <= 1.0 for row in f1)
    assert not [name for name in plots if name.startswith("reports/train/")]


def test_dvc_plots_draw_one_roc_line_per_class(repo):
    path, env, _ = repo
    shown = json.loads(sh("dvc", "plots", "show", "--json", cwd=path, env=env))["data"]
    for arch in ARCH_NAMES:
        (roc,) = shown[f"reports/evaluate/plots/roc_val/{arch}.csv"]
        assert roc["content"]["encoding"]["color"]["field"] == "class"
        values = roc["content"]["data"]["values"]
        assert {row["class"] for row in values} == {"benign", "malignant", "normal"}


def test_dvc_plots_show_draws_every_chart_with_the_network_blocked(repo, browser, tmp_path):
    """A hospital firewall: the page `dvc plots show` writes draws every vega chart from the
    libraries it carries (.dvc/plots.html), with every request beyond file:// refused."""
    path, env, _ = repo
    shown = json.loads(sh("dvc", "plots", "show", "--json", cwd=path, env=env))["data"]
    charts = sum(1 for entries in shown.values() for e in entries if e["type"] == "vega")
    images = sum(1 for entries in shown.values() for e in entries if e["type"] == "image")
    # every model's training curves, every model's confusion; per model a ROC, a reliability
    assert charts == 2 + 2 * len(ARCH_NAMES)
    assert images == 1  # the data's contact sheet; no PNG copy of a vega figure
    sh("dvc", "plots", "show", "-o", str(tmp_path / "plots"), cwd=path, env=env)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused = block_network(page)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((tmp_path / "plots" / "index.html").as_uri(), wait_until="load")
    drawn = page.locator(".vega-embed canvas.marks, .vega-embed svg.marks")
    drawn.nth(charts - 1).wait_for(timeout=30_000)
    assert drawn.count() == charts
    assert (refused, errors) == ([], [])
    page.screenshot(path=str(tmp_path / "plots.png"), full_page=True)
    page.close()


def test_two_tracked_runs_and_a_registered_challenger(repo):
    path, _, _ = repo
    uri = f"sqlite:///{path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("busi-tumor-classification")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["arch"] for r in runs) == ["densenet121", "resnet50"]
    for run in runs:
        assert run.data.tags["data_kind"] == "synthetic-demo"
        assert run.data.tags["git_commit"] != "unknown"
        # training runs carry validation; test lives in the ledger, one run per look
        assert "val_macro_f1" in run.data.metrics
        assert "test_macro_f1" not in run.data.metrics
    assert_mlflow_shows_the_runs_as_its_users_expect(client, experiment.experiment_id, runs)
    looks_at = client.get_experiment_by_name(ledger.ledger_experiment("busi-tumor-classification"))
    looks = client.search_runs([looks_at.experiment_id])
    external = [r for r in looks if r.data.tags["purpose"].startswith("external")]
    assert len(external) == len(SITES["external"])  # each site's scoring is a look too
    looks = [r for r in looks if r not in external]
    assert len(looks) == 2
    assert all("test_macro_f1" in r.data.metrics for r in looks)
    version = client.get_model_version_by_alias("tumor-classifier", "challenger")
    selection = json.loads((path / "reports/selection.json").read_text())
    release = json.loads((path / "models/selected/release.json").read_text())
    assert str(version.version) == release["provenance"]["version"]
    assert version.tags["arch"] == selection["winner"] == release["provenance"]["arch"]
    assert "manifest_sha256" in version.tags
    assert "val_macro_f1" in version.tags
    served = load_classifier("models:/tumor-classifier@challenger", tracking_uri=uri)
    assert served.release.rule.to_dict() == release["rule"]  # the rule travels in the model


def test_every_reported_test_figure_is_a_figure_of_the_served_answers(repo):
    """The release answers each test image as every surface would (`answer_batch`, the serving
    core); scored here with scikit-learn, its answers give the reported test figures exactly."""
    path, _, _ = repo
    params = yaml.safe_load((path / "params.yaml").read_text())
    classes = tuple(params["classes"])
    winner = json.loads((path / "reports/selection.json").read_text())["winner"]
    evaluated = path / "reports/evaluate/models" / winner / "metrics.json"
    reported = json.loads(evaluated.read_text())["test"]
    test = load_set(path / "data/prepared", classes, split="test")
    classifier = load_classifier(path / "models/selected")
    answers = []
    for start in range(0, len(test), 64):  # evaluate's batches
        answers += classifier.answer_batch(test.images[start : start + 64].astype("float32"))
    y, k, m = test.labels, len(classes), classes.index("malignant")
    refused = np.array([a["class"] == OUT_OF_SCOPE for a in answers])
    decided = np.array([k if a["class"] == OUT_OF_SCOPE else classes.index(a["class"])
                        for a in answers])  # fmt: skip
    flagged = np.array([a["decision"]["refer"] is True for a in answers])
    proba = np.array([[a["probabilities"][c] for c in classes] for a in answers])
    op = reported["operating_point"]
    found = {
        "macro_f1": f1_score(y, decided, labels=list(range(k)), average="macro", zero_division=0),
        "sensitivity": flagged[y == m].mean(),
        "specificity": (~flagged)[y != m].mean(),
        "ppv": (y[flagged] == m).mean(),
        "npv": (y[~flagged] != m).mean(),
        "ece": metrics.expected_calibration_error(
            y[~refused], proba[~refused], params["evaluate"]["ece_bins"]
        ),
    }
    shown = {"macro_f1": reported["macro_f1"]["value"], "ece": reported["ece"]["value"]}
    shown |= {key: op[key]["value"] for key in ("sensitivity", "specificity", "ppv", "npv")}
    assert found == pytest.approx(shown, abs=1e-9, rel=0)
    for c, name in enumerate(classes):
        assert reported["refused_by_class"][name]["n"] == int(refused[y == c].sum()), name
    assert reported["coverage"]["n"] == int((~refused).sum())


def assert_mlflow_shows_the_runs_as_its_users_expect(client, experiment_id: str, runs) -> None:
    """Distinct run names; each training run has the data manifest as a dataset input with its
    digest and its Keras model as a LoggedModel (the Models tab), besides select's release."""
    assert len({run.info.run_name for run in runs}) == len(runs)
    for run in runs:
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "manifest"
        assert dataset.dataset.digest
        logged = mlflow.search_logged_models(
            experiment_ids=[experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'",
            output_format="list",
        )
        assert "model" in {model.name for model in logged}, logged


def test_external_validation_reports_the_second_site_with_intervals_and_calibration(repo):
    path, _, log = repo
    assert log.index("Running stage 'external'") > log.index("Running stage 'select'")
    summary = json.loads((path / "reports/external/summary.json").read_text())
    site = next(s for s in summary["sites"] if s["name"] == "synthetic-site-b")
    assert site["counts"]["kept"] == 30
    sensitivity = site["figures"]["referral"]["sensitivity"]
    assert sensitivity["ci_low"] <= sensitivity["value"] <= sensitivity["ci_high"]
    assert {"observed_share", "expected_share", "reliability"} <= site["figures"][
        "calibration"
    ].keys()
    card = (path / "reports/external/model_card_section.md").read_text()
    assert "### Site `synthetic-site-b`" in card
    assert "calibration" in card.lower()
    uri = f"sqlite:///{path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("tumor-classifier", "challenger")
    assert "### Site `synthetic-site-b`" in version.description  # the card that travels


def test_planted_copies_of_development_images_rerun_only_external_and_are_left_out(repo):
    """An exact copy and a 20% crop of development scans, added to a site: only `external` is
    out of date, and its report lists both as left out."""
    path, env, _ = repo
    demo, planted = path / "data/raw/synthetic-demo", path / "data/external/planted"
    shutil.copy(demo / "benign" / "benign (2).png", planted / "benign" / "copy.png")
    scan = Image.open(demo / "malignant" / "malignant (2).png")
    w, h = scan.size
    scan.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(planted / "malignant" / "crop.png")
    changed = set(json.loads(sh("dvc", "status", "--json", cwd=path, env=env)))
    assert changed == {"external"}, changed
    log = sh("dvc", "repro", cwd=path, env=env)
    assert "Running stage 'external'" in log
    assert "Running stage 'select'" not in log
    pairs = {source: row["how"] for source, row in left_out_pairs(path, "planted").items()}
    assert pairs == {"benign/copy.png": "exact", "malignant/crop.png": "crop/shift"}
    summary = json.loads((path / "reports/external/summary.json").read_text())
    site = next(s for s in summary["sites"] if s["name"] == "planted")
    assert site["counts"]["kept"] == 12


def test_a_change_to_the_serving_code_reruns_select_but_never_training(repo):
    path, env, _ = repo
    decoder = path / "pipeline" / "serving" / "uploads.py"
    original = decoder.read_text()
    decoder.write_text(original + "\n# a fix to the upload decoder\n")
    try:
        changed = set(json.loads(sh("dvc", "status", "--json", cwd=path, env=env)))
    finally:
        decoder.write_text(original)
    assert "select" in changed
    assert not changed & {"train@densenet121", "train@resnet50", "prepare", "augment"}, changed


def test_changing_one_training_param_reruns_only_what_depends_on_it(repo):
    path, env, _ = repo
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["train"]["backbones"]["resnet50"]["learning_rate"] = 0.0005
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh("dvc", "status", "--json", cwd=path, env=env)
    changed = set(json.loads(out))
    # evaluate and select read train.backbones (which models there are), so DVC names them too;
    # they re-run after a retrain in any case. The other backbone and the data stages do not.
    assert changed == {"train@resnet50", "evaluate", "select"}, changed


def test_a_bad_parameter_stops_with_one_line_naming_it(repo):
    path, env, _ = repo
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["data"]["raw_dir"] = "data/raw/does-not-exist"
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = subprocess.run(
        [str(BIN / "python"), "-m", "pipeline.prepare"],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: data.raw_dir")
    assert "Traceback" not in result.stderr


# --- a sweep: `dvc exp run --queue`, `dvc queue start` --------------------------------------------
# Last in this module on purpose: it reuses the reproduced repo (its baseline and @challenger)
# instead of a second full pipeline, and restores the params the tests above changed. One queued
# experiment: a second one (train@resnet50, evaluate, select again, ~2 CPU-minutes) would prove
# nothing more about the queue, and `make test` must stay under 15 minutes on 2 cores.

SWEEP = {"sweep-lr-high": 0.003}
EXP_SHOW_DROP = "models/|reports/"  # the hash columns of changed outputs (README, Scaling)


def aliases(path: Path) -> dict[str, str]:
    uri = f"sqlite:///{path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return dict(client.get_registered_model("tumor-classifier").aliases)


def wait_for_queue(path: Path, env: dict, timeout: float = 900) -> str:
    """`dvc queue start` returns at once; its workers run the experiments in the background."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sh("dvc", "queue", "status", cwd=path, env=env)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(5)
    raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")


@pytest.fixture(scope="module")
def sweep(repo):
    path, env, _ = repo
    sh("git", "checkout", "--", "params.yaml", cwd=path, env=env)
    sh(*GIT, "add", "-A", cwd=path, env=env)
    sh(*GIT, "commit", "-qm", "baseline reproduced", cwd=path, env=env)
    before = aliases(path)
    for name, rate in SWEEP.items():
        sh(
            "dvc", "exp", "run", "--queue", "--name", name,
            "-S", f"train.backbones.resnet50.learning_rate={rate}",
            cwd=path, env=env,
        )  # fmt: skip
    # not captured: the workers it starts keep its output pipes open after it returns
    start = ["dvc", "queue", "start"]
    subprocess.run(start, cwd=path, env=env, stdout=subprocess.DEVNULL, check=True)
    status = wait_for_queue(path, env)
    sh("dvc", "queue", "stop", cwd=path, env=env)  # the idle workers, once the queue is done
    logs = {name: sh("dvc", "queue", "logs", name, cwd=path, env=env) for name in SWEEP}
    return path, env, before, status, logs


def test_a_queued_sweep_runs_its_experiment_to_success(sweep):
    path, env, _, status, logs = sweep
    for name in SWEEP:
        line = next((s for s in status.splitlines() if name in s), "")
        assert "Success" in line, f"{name}: {status}\n{logs[name][-3000:]}"
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=path, env=env, capture_output=True, text=True
    )
    shown = json.loads(shown.stdout)
    assert SWEEP.keys() <= set(_experiment_names(shown)), shown


def _experiment_names(shown: list[dict]) -> list[str]:
    return [exp.get("name") for base in shown for exp in base.get("experiments") or []]


def test_each_experiments_training_run_lands_in_the_projects_store_tagged_with_its_name(sweep):
    path = sweep[0]
    uri = f"sqlite:///{path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("busi-tumor-classification")
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_experiment != ''")
    by_name = {run.data.tags["dvc_experiment"]: run for run in runs}
    assert set(by_name) == set(SWEEP)
    for name, rate in SWEEP.items():
        run = by_name[name]
        assert run.data.params["arch"] == "resnet50"
        assert float(run.data.params["learning_rate"]) == rate
        assert run.data.tags["dvc_stage"].startswith("train@resnet50")
        assert run.info.run_name == f"{name}/resnet50"  # tracking.run_name
    assert not list((path / ".dvc" / "tmp").rglob("mlflow.db"))  # no store left in a copy


def test_a_sweep_moves_no_registry_alias(sweep):
    path, _, before, _, _ = sweep
    assert before.get("challenger")  # the baseline `dvc repro` registered one
    assert aliases(path) == before


def test_dvc_exp_show_of_the_sweep_fits_in_200_columns(sweep):
    """The metrics and params of a sweep fit in 200 columns. Dropped here: one hash column per
    changed stage output (models/, reports/), about 190 columns more for this sweep, which plain
    `dvc exp show --only-changed` still prints (README: the --drop to use)."""
    path, env = sweep[0], sweep[1]
    wide = {**env, "COLUMNS": "1000"}  # the table at its natural width, not cut to a terminal
    command = ("dvc", "exp", "show", "--only-changed", "--no-pager", "--drop", EXP_SHOW_DROP)
    shown = sh(*command, cwd=path, env=wide)
    assert all(name in shown for name in SWEEP), shown
    assert "resnet50.f1" in shown
    assert "train.backbones.resnet50.learning_rate" in shown
    assert max(len(line) for line in shown.splitlines()) <= 200, shown


# --- a clean tree: the committed reports hold results only --------------------------------------
# Last in this module: it re-runs stages of the reproduced repo (select moves @challenger) after
# the sweep's checks. A fresh clone's `make demo` re-runs every stage; here the stages that write
# committed reports from MLflow's state (test ledger, registry) re-run, forced, on the same inputs.
# Training's committed reports (history, metrics) were checked the same way once (a forced
# train@resnet50: unchanged) and are guarded by test_train; retraining here would cost minutes.

RERUN = ("evaluate", "select", "external")


def test_rerunning_the_reporting_stages_changes_no_committed_file_but_dvc_lock(repo):
    path, env, _ = repo
    git = ("git", "-c", "user.email=t@t", "-c", "user.name=t")
    sh("git", "checkout", "--", "params.yaml", cwd=path, env=env)
    if sh("git", "status", "--porcelain", cwd=path, env=env).strip():
        sh(*git, "add", "-A", cwd=path, env=env)  # run alone: the sweep fixture did not commit
        sh(*git, "commit", "-qm", "baseline reproduced", cwd=path, env=env)
    sh("dvc", "repro", "--force", "--single-item", *RERUN, cwd=path, env=env)
    changed = sh("git", "status", "--porcelain", cwd=path, env=env).splitlines()
    diff = sh("git", "diff", "--", ".", ":(exclude)dvc.lock", cwd=path, env=env)
    assert [line[3:] for line in changed] == ["dvc.lock"], f"{changed}\n{diff[:6000]}"


# --- A workspace run brought home (issue 28): last, since it moves @challenger ---------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An MLflow tracking server on loopback standing in for an Azure ML workspace's."""
    from tests.servers import free_port, running

    folder = tmp_path_factory.mktemp("workspace")
    port = free_port()
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{folder / 'workspace.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    # a loaded 2-core machine took over two minutes to start it (uvicorn and its job runner)
    with running(command, f"{url}/health", folder / "server.log", cwd=folder, startup_seconds=400):
        yield url


def trial_run(repo: Path, url: str) -> str:
    """A run on the workspace with a trial's `pipeline/` artifacts, as deploy/azure/train-job.sh
    and report_trial.py leave them (this repo's reproduced outputs stand in for the trial's)."""
    out = repo.parent / "trial-out"
    for name in ("models/trained", "reports", "data/prepared"):
        shutil.copytree(repo / name, out / name)
    for name in ("params.yaml", "dvc.lock"):
        shutil.copyfile(repo / name, out / name)
    client = mlflow.MlflowClient(tracking_uri=url)
    run = client.create_run(client.create_experiment("busi-sweep"))
    tags = {"commit": "0123abc", "dvc_lock": "f00d", "data_version": "busi-raw@3"}
    for key, value in (tags | {"reproduce": "dvc exp run -S train.batch_size=16"}).items():
        client.set_tag(run.info.run_id, key, value)
    client.log_artifacts(run.info.run_id, str(out), artifact_path="pipeline")
    return run.info.run_id


def test_a_workspace_run_comes_home_as_the_challenger_through_select(repo, workspace):
    path, env, _ = repo
    run_id = trial_run(path, workspace)
    before = aliases(path)
    sh(
        str(BIN / "python"),
        "-m",
        "pipeline.bring_home",
        run_id,
        "--from",
        workspace,
        cwd=path,
        env=env,
    )
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")
    now = aliases(path)
    assert now["challenger"] != before.get("challenger")  # a new version, @challenger on it
    version = client.get_model_version("tumor-classifier", now["challenger"])
    assert version.tags["source_run_id"] == run_id
    assert version.tags["source_tracking_uri"] == workspace
    assert version.tags["source_commit"] == "0123abc"
    assert version.tags["source_data_version"] == "busi-raw@3"
    home = path / "build/bring-home" / run_id / "pipeline"
    release = json.loads((home / "models/selected/release.json").read_text())
    assert str(release["provenance"]["version"]) == str(now["challenger"])
    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{path / 'mlflow.db'}")
    served = load_classifier(f"models:/tumor-classifier/{now['challenger']}")
    assert str(served.release.provenance["version"]) == str(now["challenger"])
    assert "up to date" in sh("dvc", "status", cwd=path, env=env)  # the work tree is untouched


def test_a_run_without_pipeline_outputs_is_refused_in_one_line(repo, workspace):
    path, env, _ = repo
    client = mlflow.MlflowClient(tracking_uri=workspace)
    run = client.create_run(client.create_experiment("not-a-trial"))
    result = subprocess.run(
        [str(BIN / "python"), "-m", "pipeline.bring_home", run.info.run_id, "--from", workspace],
        cwd=path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "has no pipeline/ artifacts" in result.stderr
