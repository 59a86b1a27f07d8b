"""Stage `train@<arch>`, one per entry of train.backbones: fine-tune one backbone, track it in
MLflow.

`python -m pipeline.train --arch densenet121`. Reads the balanced train set from `data/augmented/`
and the validation split from `data/prepared/`; the test split is never touched here. With
pretrained weights it warms up a new head on a frozen backbone, then unfreezes (BatchNorm frozen)
at a lower learning rate; early stopping restores the best epoch on a whole-val-set metric.
Writes `models/trained/<arch>/` (model.keras, run.json) and `reports/train/<arch>/` (history,
metrics).
The phases themselves are pipeline.phases'; what each epoch records, pipeline.callbacks'.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import mlflow
import mlflow.data.pandas_dataset
import numpy as np
import pandas as pd
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.models import ModelSignature, infer_signature

from pipeline import backbones, compilation, environment, phases, plots, processes, tracking
from pipeline.batches import TrainBatches, light
from pipeline.cli import stage_main
from pipeline.config import Params, uses_demo_data
from pipeline.datasets import ImageSet, load_set
from pipeline.files import staged_dir, write_json
from pipeline.paths import (
    AUGMENTED,
    MANIFEST,
    MODELS,
    PREPARED,
    TRAIN_REPORTS,
    model_dir,
    training_history,
)

# Per-epoch columns that change from run to run on the same code and data: they go to MLflow
# only, so the committed history.csv stays byte-identical across reruns.
TIMING_COLUMNS = ("epoch_seconds", "images_per_second")


def run(params: Params, arch: str) -> dict[str, float]:
    """Train `arch`, write its model, reports and MLflow run; return the best epoch's summary.
    One trainer per arch at a time, and none that outlives the `dvc repro` that started it."""
    params.train.arch(arch)  # validates the name before any work
    processes.stop_when_orphaned()
    out = model_dir(arch)
    # the lock lies beside models/trained/, not in it: evaluate's dep hashes every file there
    with processes.exclusive(MODELS / f".{arch}.train-lock", str(out)):
        return _train(params, arch)


def _train(params: Params, arch: str) -> dict[str, float]:
    keras.utils.set_random_seed(params.seed)
    compilation.enable_cache(tracking.project_root())
    with _dtype_policy(params.train.mixed_precision):
        return _train_with_policy(params, arch)


@contextmanager
def _dtype_policy(name: str | None) -> Iterator[None]:
    """Keras keeps the dtype policy process-wide: set it for this training only, so a later model
    built in the same process (a test, a notebook, the next backbone) is float32 again."""
    previous = keras.mixed_precision.global_policy()
    if name:
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _train_with_policy(params: Params, arch: str) -> dict[str, float]:
    train = load_set(AUGMENTED, params.classes)
    val = load_set(PREPARED, params.classes, split="val")
    model = backbones.build_classifier(
        arch,
        params.prepare.image_size,
        params.classes,
        weights=params.model.weights,
        dropout=params.model.dropout,
        keep_aspect=params.prepare.keep_aspect,
    )
    tracking.setup(params.mlflow.experiment)
    synthetic = uses_demo_data(params)
    # the loader's worker processes and shared memory end with this block, on an error or Ctrl-C
    with (
        _train_batches(train, params) as batches,
        mlflow.start_run(
            run_name=tracking.run_name(arch),
            tags=tracking.run_tags(stage_name(arch), synthetic),
            log_system_metrics=params.mlflow.system_metrics,
        ) as active,
    ):
        mlflow.log_params(_run_params(params, arch, train, val))
        _log_dataset(MANIFEST)
        clock = compilation.CompileClock(arch)
        history, best_epoch = phases.fit(model, batches, val, params, arch, clock)
        summary = _summary(history, best_epoch)
        mlflow.log_metrics(_run_metrics(summary, history) | {"compile_seconds": clock.total})
        served = backbones.for_inference(model)
        _log_model(served, params, arch, synthetic)
        run_info = {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id}
        with staged_dir(model_dir(arch)) as out:
            served.save(out / "model.keras")
            write_json(out / "run.json", run_info)
        _write_reports(history, summary, best_epoch, arch)
    best_f1 = summary["val_macro_f1"]
    print(f"train {arch}: best epoch {summary['best_epoch']}, val macro-F1 {best_f1:.3f}")
    return summary


def _train_batches(train: ImageSet, params: Params) -> TrainBatches:
    """The shuffled, one-hot training batches, augmented on the fly when the params say so."""
    return TrainBatches(
        train.images,
        train.labels,
        len(params.classes),
        params.train.batch_size,
        params.seed,
        augment=light(params.augment) if params.train.augment_on_the_fly else None,
        workers=params.train.loader_workers,
        kind=params.train.loader_kind,
    )


def _log_model(served: keras.Model, params: Params, arch: str, synthetic: bool) -> None:
    """The trained model as a plain Keras LoggedModel of the active run. The serving flavor, with
    the decision rule, is built by `select` for the winner only, so no serving code is a train
    dependency."""
    mlflow.keras.log_model(
        served,
        name="model",
        signature=_signature(params),
        pip_requirements=environment.pins(["mlflow", "keras", "numpy"], keras.backend.backend()),
        metadata={"classes": list(params.classes), "arch": arch, "synthetic_data": synthetic},
    )


def _write_reports(
    history: pd.DataFrame, summary: dict[str, float | int], best_epoch: int, arch: str
) -> None:
    """reports/train/<arch>/: history.csv (no timings), metrics.json and curves.png; the history
    and the curves also go to the active MLflow run."""
    folder = TRAIN_REPORTS / arch
    plots.save_csv(history.drop(columns=list(TIMING_COLUMNS)), training_history(arch))
    write_json(folder / "metrics.json", summary)
    plots.save_png(
        plots.history_figure(history, f"{arch}: training curves", best_epoch),
        folder / "curves.png",
    )
    mlflow.log_artifact(str(training_history(arch)))
    mlflow.log_artifact(str(folder / "curves.png"))


def _summary(history: pd.DataFrame, best_epoch: int) -> dict[str, float | int]:
    """The committed training summary: the best epoch (numbered as Keras prints it) and its val
    metrics. Nothing that varies between reruns of the same code and data (timings go to MLflow)."""
    best = history.loc[history.epoch == best_epoch].iloc[0]
    return {
        "best_epoch": int(best_epoch),
        "epochs_run": len(history),
        **{k: float(best[k]) for k in ("val_macro_f1", "val_accuracy", "val_loss")},
    }


def _run_metrics(summary: dict[str, float | int], history: pd.DataFrame) -> dict[str, float]:
    """The run's summary metrics under plain names: `best_epoch`, `epochs_run`, `train_seconds`
    and the best epoch's `best_val_*` (evaluate later logs the saved model's `val_*`)."""
    out = {k: float(v) for k, v in summary.items() if not k.startswith("val_")}
    out |= {f"best_{k}": float(v) for k, v in summary.items() if k.startswith("val_")}
    out["train_seconds"] = float(history["epoch_seconds"].sum())
    return out


def _log_dataset(manifest: Path) -> None:
    """The manifest as the run's training dataset (MLflow's Datasets column), with a digest of
    its content: two runs on the same prepared data show the same digest. The source is given
    as MLflow's `local` type, relative to the project: a bare path string matches two registered
    source types and MLflow warns "can be interpreted in multiple ways"."""
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    source = get_dataset_source_from_json(json.dumps({"uri": manifest.as_posix()}), "local")
    dataset = mlflow.data.pandas_dataset.from_pandas(
        frame, source=source, targets="label", name="manifest", digest=digest
    )
    mlflow.log_input(dataset, context="training")


def _signature(params: Params) -> ModelSignature:
    """Input: a batch of 0-255 RGB images at the training size; output: class probabilities."""
    size = params.prepare.image_size
    example = np.zeros((1, size, size, 3), dtype=np.float32)
    return infer_signature(example, np.zeros((1, len(params.classes)), dtype=np.float32))


def _run_params(params: Params, arch: str, train: ImageSet, val: ImageSet) -> dict[str, object]:
    ap = params.train.arch(arch)
    t = params.train
    return {
        "arch": arch,
        "weights": params.model.weights or "none",
        "dropout": params.model.dropout,
        "image_size": params.prepare.image_size,
        "batch_size": t.batch_size,
        "optimizer": t.optimizer,
        "schedule": t.schedule,
        "weight_decay": t.weight_decay,
        "label_smoothing": t.label_smoothing,
        "class_weights": t.class_weights,
        "augment_on_the_fly": t.augment_on_the_fly,
        "loader_workers": t.loader_workers,
        "run_eagerly": t.run_eagerly,
        "monitor": t.monitor,
        "patience": t.patience,
        "mixed_precision": t.mixed_precision or "none",
        "warmup_epochs": ap.warmup_epochs,
        "epochs": ap.epochs,
        "learning_rate": ap.learning_rate,
        "fine_tune_learning_rate": ap.fine_tune_learning_rate,
        "unfreeze": ap.unfreeze,
        "seed": params.seed,
        "classes": ",".join(params.classes),
        "n_train": len(train),
        "n_val": len(val),
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "train_class_counts": json.dumps(
            {c: int((train.labels == i).sum()) for i, c in enumerate(params.classes)}
        ),
    }


def stage_name(arch: str) -> str:
    """The DVC stage that trains `arch` (dvc.yaml's foreach over train.backbones), for the run's
    `dvc_stage` tag."""
    return f"train@{arch}"


def main(argv: list[str] | None = None) -> int:
    """The command line of the `train@<arch>` stages (--arch, a name in train.backbones); a user
    error is one line and exit code 2."""

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--arch", required=True, help="a backbone named in train.backbones")

    return stage_main(__doc__, run, argv, configure)


if __name__ == "__main__":
    raise SystemExit(main())
