"""The training of one backbone as phases: an explicit warm-up on a frozen backbone, then
fine-tuning of its top blocks at a lower rate (STYLE.md's numbered schedule), each phase one
compiled `fit`; the best epoch over all phases is the one kept.

pipeline.train runs the stage around it (data, MLflow run, saved model, reports); this module is
what happens to the weights, and is what tests and the data-parallel check call directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from pipeline import backbones, callbacks, compilation, distribution
from pipeline.batches import TrainBatches
from pipeline.callbacks import lower_is_better
from pipeline.config import Params
from pipeline.datasets import ImageSet
from pipeline.errors import UserError


def fit(
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
    best = callbacks.BestWeights(params.train.monitor)
    line = callbacks.EpochLine(arch, params.train.arch(arch).epochs)
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
            callbacks.ValidationMetrics(val, len(batches.labels), params.train.batch_size),
            callbacks.MlflowEpochLogger(),
            *shared,
            _early_stopping(params),
        ],
        verbose=0,  # EpochLine prints one line per epoch
    )
    frame = pd.DataFrame(history.history)
    # Epochs numbered as Keras prints them ("Epoch 1/5"), in history, plots and summaries.
    frame.insert(0, "epoch", [e + 1 for e in history.epoch])
    return frame


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
        mode="min" if lower_is_better(monitor) else "max",
        patience=params.train.patience,
    )


def _class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return {i: float(len(labels) / (n_classes * c)) if c else 0.0 for i, c in enumerate(counts)}
