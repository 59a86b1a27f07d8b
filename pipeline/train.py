"""Stage `train@<arch>`, one per entry of train.backbones: fine-tune one backbone, track it in
MLflow.

`python -m pipeline.train --arch densenet121`. Reads the balanced train set from `data/augmented/`
and the validation split from `data/prepared/`; the test split is never touched here. With
pretrained weights it warms up a new head on a frozen backbone, then unfreezes (BatchNorm frozen)
at a lower learning rate; early stopping restores the best epoch on a whole-val-set metric.
Writes `models/<arch>/` (model.keras, run.json) and `reports/train/<arch>/` (history, metrics).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import mlflow.data.pandas_dataset
import numpy as np
import pandas as pd
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.models import ModelSignature, infer_signature
from sklearn.metrics import f1_score

from pipeline import backbones, compilation, distribution, environment, plots, processes, tracking
from pipeline.batches import TrainBatches, light
from pipeline.cli import stage_main
from pipeline.config import Params, uses_demo_data
from pipeline.datasets import ImageSet, load_set
from pipeline.errors import UserError
from pipeline.files import staged_dir, write_json
from pipeline.paths import AUGMENTED, MANIFEST, PREPARED, TRAIN_REPORTS, model_dir

# Per-epoch columns that change from run to run on the same code and data: they go to MLflow
# only, so the committed history.csv stays byte-identical across reruns.
TIMING_COLUMNS = ("epoch_seconds", "images_per_second")


class ValidationMetrics(keras.callbacks.Callback):
    """Adds the val metrics, lr, time and images/s (of the training alone) to each epoch's logs.

    `val_loss`, `val_accuracy` and `val_macro_f1` come from one prediction of the whole val set
    (macro-F1 averaged per batch would be wrong), padded to split evenly over data-parallel devices.
    """

    def __init__(self, val: ImageSet, n_train: int, batch_size: int) -> None:
        super().__init__()
        self.val, self.n_train, self.batch_size = val, n_train, batch_size

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock (the epoch time is logged with the metrics)."""
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Validation loss, accuracy and macro-F1, the learning rate and the epoch's time into the
        logs, where early stopping and MLflow read them."""
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self.started
        proba = _predict(self.model, self.val.images, self.batch_size)
        onehot = np.eye(proba.shape[1], dtype="float32")[self.val.labels]
        logs["val_loss"] = float(keras.ops.convert_to_numpy(self.model.loss(onehot, proba)))
        logs["val_accuracy"] = float(np.mean(proba.argmax(axis=1) == self.val.labels))
        logs["val_macro_f1"] = float(
            f1_score(self.val.labels, proba.argmax(axis=1), average="macro", zero_division=0)
        )
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        logs["epoch_seconds"] = seconds
        logs["images_per_second"] = self.n_train / seconds


class BestWeights(keras.callbacks.Callback):
    """The best epoch on `monitor` and its weights, across every phase (fit call) of a training.

    Keras' EarlyStopping restores the best weights of its own fit call only: after warm-up and
    fine-tuning it would keep the fine-tuning best even when a warm-up epoch scored higher, and the
    saved model would not be the reported best epoch. This one is shared by all phases.
    """

    def __init__(self, monitor: str) -> None:
        super().__init__()
        self.monitor = monitor
        self.best: float | None = None
        self.epoch: int | None = None
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Keep the weights of the best epoch so far by the monitored metric."""
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self.best is None or (
            value < self.best if _lower_is_better(self.monitor) else value > self.best
        ):
            self.best, self.epoch, self.weights = float(value), epoch, self.model.get_weights()

    def restore(self) -> None:
        """Put the best epoch's weights back (no-op when no epoch was finite)."""
        if self.weights is not None:
            self.model.set_weights(self.weights)


class EpochLine(keras.callbacks.Callback):
    """One line per epoch, within 120 columns: what Keras' own log (every metric, 200 columns
    and more) buries. The full record is in MLflow and reports/train/<arch>/history.csv."""

    def __init__(self, arch: str, epochs: int) -> None:
        super().__init__()
        self.arch, self.epochs = arch, epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Print the epoch's training and validation figures, its learning rate and speed."""
        print(epoch_line(self.arch, epoch + 1, self.epochs, logs or {}), flush=True)


def epoch_line(arch: str, epoch: int, epochs: int, logs: dict[str, float]) -> str:
    """`train densenet121 epoch 3/10: loss 0.512 acc 0.800 | val loss 0.431 acc 0.844 macro-F1
    0.835 | lr 1e-04 12 s 89 img/s` (a dash for a figure the logs lack)."""

    def figure(key: str, spec: str = ".3f") -> str:
        value = logs.get(key)
        return "-" if value is None else format(value, spec)

    return (
        f"train {arch} epoch {epoch}/{epochs}: loss {figure('loss', '.3g')} "
        f"acc {figure('accuracy')} | val loss {figure('val_loss', '.3g')} "
        f"acc {figure('val_accuracy')} macro-F1 {figure('val_macro_f1')} | "
        f"lr {figure('learning_rate', '.0e')} {figure('epoch_seconds', '.0f')} s "
        f"{figure('images_per_second', '.0f')} img/s"
    )


class MlflowEpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics to the active MLflow run, step = the epoch as Keras prints it (from 1),
    numbered across phases."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Log the epoch's metrics to the active MLflow run, with the epoch as the step."""
        mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1)


def run(params: Params, arch: str) -> dict[str, float]:
    """Train `arch`, write its model, reports and MLflow run; return the best epoch's summary.
    One trainer per arch at a time, and none that outlives the `dvc repro` that started it."""
    params.train.arch(arch)  # validates the name before any work
    processes.stop_when_orphaned()
    out = model_dir(arch)
    with processes.exclusive(out.with_name(f".{arch}.train-lock"), str(out)):
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
        history, best_epoch = _fit(model, batches, val, params, arch, clock)
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
    plots.save_csv(history.drop(columns=list(TIMING_COLUMNS)), folder / "history.csv")
    write_json(folder / "metrics.json", summary)
    plots.save_png(
        plots.history_figure(history, f"{arch}: training curves", best_epoch),
        folder / "curves.png",
    )
    mlflow.log_artifact(str(folder / "history.csv"))
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


def _fit(
    model: keras.Model,
    batches: TrainBatches,
    val: ImageSet,
    params: Params,
    arch: str,
    clock: compilation.CompileClock | None = None,
) -> tuple[pd.DataFrame, int]:
    """Warm-up (frozen backbone) then fine-tuning, ending on the best epoch's weights.

    Returns the per-epoch history of both phases and the best epoch (on `train.monitor`). With
    `train.distribution: data_parallel` a replica of `model` trains on every local device and
    `model` receives its final weights.
    """
    with distribution.data_parallel(model, params.train) as (net, devices):
        feed = batches if devices == 1 else distribution.WholeShards(batches, devices)
        return _train_phases(net, feed, val, params, arch, clock or compilation.CompileClock(arch))


@dataclass(frozen=True)
class Phase:
    """One `fit` call: epochs `first` (from 0) up to `last`, at `learning_rate`, with the
    backbone's top `unfreeze` blocks trainable ("all": every layer; None: the backbone frozen)."""

    name: str
    first: int
    last: int
    learning_rate: float
    unfreeze: int | str | None


def schedule(params: Params, arch: str) -> list[Phase]:
    """The training of `arch` as phases: an explicit warm-up, then fine-tuning."""
    ap = params.train.arch(arch)
    # 1) from scratch: no pretrained features to protect, so every layer, BatchNorm included,
    #    trains from the first epoch at learning_rate (warmup_epochs does not apply)
    if params.model.weights is None:
        return [Phase("train", 0, ap.epochs, ap.learning_rate, "all")]
    # 2) pretrained, no warm-up: the top `unfreeze` blocks fine-tune from the first epoch, at
    #    learning_rate (the new head starts random, so keep this rate low)
    if ap.warmup_epochs == 0:
        return [Phase("fine-tune", 0, ap.epochs, ap.learning_rate, ap.unfreeze)]
    # 3) pretrained, warm-up: the new head trains alone on the frozen backbone at learning_rate,
    #    so its first, large gradients from random weights never reach the pretrained features
    warm_up = Phase("warm-up", 0, ap.warmup_epochs, ap.learning_rate, None)
    # 4) ...then, if epochs remain, the top `unfreeze` blocks fine-tune at the lower
    #    fine_tune_learning_rate; warmup_epochs == epochs trains the head alone (a linear probe)
    if ap.warmup_epochs == ap.epochs:
        return [warm_up]
    fine_tune = Phase(
        "fine-tune", ap.warmup_epochs, ap.epochs, ap.fine_tune_learning_rate, ap.unfreeze
    )
    return [warm_up, fine_tune]


def _train_phases(
    model: keras.Model,
    batches: TrainBatches,
    val: ImageSet,
    params: Params,
    arch: str,
    clock: compilation.CompileClock,
) -> tuple[pd.DataFrame, int]:
    """Each phase of `schedule` in turn; the best epoch over all of them is restored at the end."""
    best = BestWeights(params.train.monitor)
    line = EpochLine(arch, params.train.arch(arch).epochs)
    frames = []
    for phase in schedule(params, arch):
        _set_trainable(model, phase, params.model.weights is not None, arch)
        frames.append(_fit_phase(model, batches, val, params, phase, [best, clock, line]))
    history = pd.concat(frames, ignore_index=True)
    if best.epoch is None:
        raise UserError(
            f"train.monitor: {best.monitor} was not a finite number in any of {len(history)} "
            "epochs (the training diverged); lower the learning rate or monitor val_macro_f1"
        )
    best.restore()
    return history, best.epoch + 1


def _set_trainable(model: keras.Model, phase: Phase, pretrained: bool, arch: str) -> None:
    """Freeze the backbone for a warm-up; otherwise unfreeze the phase's blocks, BatchNorm kept
    frozen when the weights are pretrained (backbones.set_backbone_trainable says why)."""
    if phase.unfreeze is None:
        backbones.freeze_backbone(model)
        return
    unfrozen = backbones.set_backbone_trainable(model, phase.unfreeze, pretrained)
    if pretrained:
        print(
            f"train {arch}: fine-tuning {len(unfrozen)} backbone blocks, "
            f"{unfrozen[0]} to {unfrozen[-1]}, BatchNorm frozen"
            if unfrozen
            else f"train {arch}: the backbone stays frozen (unfreeze: 0)"
        )


def _fit_phase(
    model: keras.Model,
    batches: TrainBatches,
    val: ImageSet,
    params: Params,
    phase: Phase,
    shared: list[keras.callbacks.Callback],
) -> pd.DataFrame:
    """Compile at the phase's learning rate and fit its epochs; returns their history rows.

    `shared`: the callbacks that span phases (the best weights, the epoch lines)."""
    _compile(model, params, phase.learning_rate, steps=len(batches) * (phase.last - phase.first))
    history = model.fit(
        batches,  # validation: ValidationMetrics, one whole-set prediction per epoch
        initial_epoch=phase.first,
        epochs=phase.last,
        # TrainBatches orders each epoch from (seed, epoch); Keras' own shuffle of the batch
        # order draws on Python's global `random`, which anything else may have consumed.
        shuffle=False,
        class_weight=_class_weights(batches.labels, len(params.classes))
        if params.train.class_weights
        else None,
        callbacks=[
            ValidationMetrics(val, len(batches.labels), params.train.batch_size),
            MlflowEpochLogger(),
            *shared,
            _early_stopping(params),
        ],
        verbose=0,  # EpochLine prints one line per epoch
    )
    frame = pd.DataFrame(history.history)
    # Epochs numbered as Keras prints them ("Epoch 1/5"), in history, plots and summaries.
    frame.insert(0, "epoch", [e + 1 for e in history.epoch])
    return frame


def _signature(params: Params) -> ModelSignature:
    """Input: a batch of 0-255 RGB images at the training size; output: class probabilities."""
    size = params.prepare.image_size
    example = np.zeros((1, size, size, 3), dtype=np.float32)
    return infer_signature(example, np.zeros((1, len(params.classes)), dtype=np.float32))


def _predict(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`model`'s probabilities for every image; under data parallelism the set is padded (with
    copies of its first image) to a whole number of per-device shares, and the padding dropped."""
    current = keras.distribution.distribution()
    devices = 1 if current is None else current.device_mesh.devices.size
    pad = -len(images) % devices
    if pad:
        images = np.concatenate([images, np.repeat(images[:1], pad, axis=0)])
    return model.predict(images, batch_size=batch_size, verbose=0)[: len(images) - pad]


def _compile(model: keras.Model, params: Params, learning_rate: float, steps: int) -> None:
    t = params.train
    if t.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    if t.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            learning_rate, momentum=0.9, weight_decay=t.weight_decay or None
        )
    elif t.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=t.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=t.weight_decay or None)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
        metrics=["accuracy"],
        # graph tracing costs minutes per model (DenseNet121: ~3 CPU-min) and pays back only
        # over many steps; a tiny smoke run is faster op by op (params.yaml says when)
        run_eagerly=t.run_eagerly,
    )


def _early_stopping(params: Params) -> keras.callbacks.EarlyStopping:
    """Patience within a phase; the best weights over all phases are BestWeights' job."""
    monitor = params.train.monitor
    return keras.callbacks.EarlyStopping(
        monitor=monitor,
        mode="min" if _lower_is_better(monitor) else "max",
        patience=params.train.patience,
    )


def _lower_is_better(monitor: str) -> bool:
    """The direction of a `train.monitor` metric: a loss falls, the scores rise."""
    return monitor == "val_loss"


def _class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return {i: float(len(labels) / (n_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


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
