"""The test-split ledger's MLflow experiment: its name reads apart from the others', and an
existing store's ledger under the old name keeps its history."""

from pathlib import Path

import mlflow
import yaml

from pipeline import ledger

ROOT = Path(__file__).resolve().parents[2]
SHOWN = 20  # MLflow's experiment lists cut a name after this many characters


def project_experiments() -> set[str]:
    """Every experiment name the project creates: the params files' training experiment and its
    ledger, and the Azure ML jobs' experiments."""
    names = set()
    for params in ("params.yaml", "params-busi.yaml"):
        experiment = yaml.safe_load((ROOT / params).read_text())["mlflow"]["experiment"]
        names |= {experiment, ledger.ledger_experiment(experiment)}
    for job in sorted((ROOT / "deploy/azure").glob("*-job.yml")):
        names.add(yaml.safe_load(job.read_text())["experiment_name"])
    return names


def test_every_experiment_name_reads_apart_in_its_first_20_characters():
    names = project_experiments()
    assert len(names) >= 3  # training, its ledger, the Azure sweep
    shown = {name[:SHOWN] for name in names}
    assert len(shown) == len(names), sorted(names)


def test_a_ledger_under_the_old_name_is_renamed_with_its_history(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the ledger file (reports/test_looks.csv) lands here
    monkeypatch.delenv("DVC_ROOT", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # a store an earlier test in this process set must not win
    client = mlflow.MlflowClient(tracking_uri=uri)
    old_id = client.create_experiment(f"busi{ledger.OLD_LEDGER_SUFFIX}")
    earlier = client.create_run(old_id, run_name="evaluate: test report: resnet50").info.run_id

    look = {"split_sha256": "s", "manifest_sha256": "m", "model": "densenet121"}
    ledger.record_look("busi", **look, model_sha256="d", purpose="p", metrics={"test_f1": 0.5})

    assert client.get_experiment_by_name(f"busi{ledger.OLD_LEDGER_SUFFIX}") is None
    renamed = client.get_experiment_by_name(ledger.ledger_experiment("busi"))
    assert renamed.experiment_id == old_id
    runs = client.search_runs([old_id])
    assert {r.info.run_id for r in runs} >= {earlier}
    assert len(runs) == 2  # the old look kept, the new one beside it
    assert ledger.read_looks()[0]["model"] == "densenet121"
