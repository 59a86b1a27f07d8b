"""What an Azure ML training job or sweep trial tells its own run (train-job.sh calls this).

Three modes, in the order the job uses them:

- `--apply OVERRIDE...`: write `section.key=value` overrides into params.yaml the way
  `dvc exp run -S` would (values read as YAML; a key params.yaml does not have is refused by name,
  so a typo in the sweep's search space fails the trial at once instead of training defaults).
  `tag.*` arguments are skipped here.
- `--interim OVERRIDE...`: after a training stage, the sweep's primary metric so far: the best
  validation value of `train.monitor` over the backbones trained yet (reports/train/<arch>/
  history.csv). Azure ML's early-termination policy compares trials on these reports.
- `--final OUT OVERRIDE...`: after evaluate, the primary metric as select would choose: the winner's
  validation `select.metric` (pipeline.select.choose over
  reports/evaluate/models/<arch>/metrics.json),
  each backbone's value, the tags (the commit, dvc.lock's sha256 and data version the submitter
  recorded, and the `dvc exp run -S ...` command that reproduces the trial), and OUT, the job's
  outputs, as the run's `pipeline/` artifacts (`python -m pipeline.bring_home` reads them).

The run is the job's own (Azure ML sets MLFLOW_RUN_ID and MLFLOW_TRACKING_URI); the primary
metric's name is `val_<select.metric>`, which sweep-job.yml's objective names.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

PARAMS = Path("params.yaml")
PRIMARY_PREFIX = "val_"


def split(arguments: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(params overrides, tags) from `section.key=value` and `tag.name=value` arguments."""
    overrides, tags = {}, {}
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {argument!r}: expected section.key=value")
        if key.startswith("tag."):
            tags[key.removeprefix("tag.")] = value
        else:
            overrides[key] = value
    return overrides, tags


def apply(params: dict, overrides: dict[str, str]) -> dict:
    """`params` with each dotted key set to its YAML-read value; unknown keys are refused."""
    for dotted, text in overrides.items():
        *path, last = dotted.split(".")
        node = params
        for part in path:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"error: {dotted}: params.yaml has no section {part!r}")
            node = node[part]
        if last not in node:
            raise SystemExit(f"error: {dotted}: params.yaml has no such key")
        node[last] = yaml.safe_load(text)
    return params


def reproduce_command(overrides: dict[str, str]) -> str:
    """The local command that reruns this trial on the same commit and data."""
    sets = " ".join(f"-S {k}={v}" for k, v in overrides.items() if k != "data.raw_dir")
    return f"dvc exp run {sets}".strip()


def best_trained(params: dict) -> float | None:
    """The best validation `train.monitor` value over the backbones trained so far."""
    monitor, best = params["train"]["monitor"], None
    for history in sorted(Path("reports/train").glob("*/history.csv")):
        with history.open() as f:
            values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor)]
        if values:
            best = max(values) if best is None else max(best, *values)
    return best


def evaluated(metric: str) -> tuple[str, dict[str, float]]:
    """(winner, validation `metric` per backbone) from evaluate's reports, chosen as select does."""
    from pipeline.select import choose

    metrics = {
        path.parent.name: json.loads(path.read_text())
        for path in sorted(Path("reports/evaluate/models").glob("*/metrics.json"))
    }
    winner, _ = choose(metrics, metric)
    return winner, {arch: float(m["val"][metric]["value"]) for arch, m in metrics.items()}


def log(
    primary: str, value: float, extra: dict[str, float], tags: dict[str, str], out: Path | None
):
    """Log to the job's run (MLFLOW_RUN_ID); each report is the next step of the primary metric."""
    import mlflow

    with mlflow.start_run() as run:
        step = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, primary))
        mlflow.log_metric(primary, value, step=step)
        mlflow.log_metrics(extra)
        mlflow.set_tags(tags)
        if out is not None:
            mlflow.log_artifacts(str(out), artifact_path="pipeline")


def main(argv: list[str] | None = None) -> int:
    """One of the three modes of the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--apply", action="store_true", help="write the overrides to params.yaml")
    mode.add_argument("--interim", action="store_true", help="report after a training stage")
    mode.add_argument("--final", type=Path, metavar="OUT", help="report after evaluate")
    parser.add_argument("arguments", nargs="*", help="section.key=value and tag.name=value")
    args = parser.parse_args(argv)
    overrides, tags = split(args.arguments)
    params = yaml.safe_load(PARAMS.read_text())
    if args.apply:
        PARAMS.write_text(yaml.safe_dump(apply(params, overrides), sort_keys=False))
        return 0
    primary = PRIMARY_PREFIX + params["select"]["metric"]
    tags = {**tags, "reproduce": reproduce_command(overrides)}
    if args.interim:
        best = best_trained(params)
        if best is not None:
            log(primary, best, {}, tags, None)
        return 0
    evaluated = Path("reports/evaluate/models").glob("*/metrics.json")
    if not any(evaluated):  # a job that stopped earlier
        log(primary, best_trained(params) or 0.0, {}, tags, args.final)
        return 0
    winner, values = evaluated(params["select"]["metric"])
    extra = {f"{primary}_{arch}": value for arch, value in values.items()}
    log(primary, values[winner], extra, {**tags, "winner": winner}, args.final)
    print(f"report_trial: {primary} = {values[winner]:.4f} ({winner})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
