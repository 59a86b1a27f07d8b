"""The training as phases: a warm-up on a frozen backbone, then the top blocks fine-tuned at the
lower rate with BatchNorm frozen; a diverged training is one clear error."""

import dataclasses

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import augment, backbones, callbacks, phases, train
from pipeline.batches import TrainBatches
from pipeline.config import Params
from pipeline.datasets import ImageSet
from pipeline.errors import UserError
from tests.factories import enter_project, make_prepared, project_params


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A stand-in for Keras' ImageNet notop file: same format, made here (no download)."""
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    source.save_weights(path)
    return path, source


def pretrained_params(weights_path, warmup_epochs: int, epochs: int) -> Params:
    return project_params(
        {
            "prepare": {"image_size": 32},
            "mlflow": {"experiment": "unit-test"},
            "model": {"weights": str(weights_path)},
            "train": {
                "batch_size": 8,
                "run_eagerly": True,
                "backbones": {
                    "resnet50": {
                        "warmup_epochs": warmup_epochs,
                        "epochs": epochs,
                        "learning_rate": 0.01,
                        "fine_tune_learning_rate": 0.0001,
                        "unfreeze": 2,
                    }
                },
            },
        }
    )


def phase_list(params: Params) -> list[tuple]:
    return [(p.name, p.first, p.last, p.learning_rate, p.unfreeze) for p in phases.schedule(
        params, "resnet50"
    )]  # fmt: skip


def test_the_schedule_is_a_warm_up_on_a_frozen_backbone_then_fine_tuning_at_the_lower_rate():
    weights = "weights.h5"  # only its presence matters to the schedule
    assert phase_list(pretrained_params(weights, warmup_epochs=1, epochs=3)) == [
        ("warm-up", 0, 1, 0.01, None),
        ("fine-tune", 1, 3, 0.0001, 2),
    ]
    # no warm-up: fine-tuning from the first epoch, at the head's rate
    assert phase_list(pretrained_params(weights, warmup_epochs=0, epochs=3)) == [
        ("fine-tune", 0, 3, 0.01, 2)
    ]
    # warm-up for every epoch: the backbone never unfreezes
    assert phase_list(pretrained_params(weights, warmup_epochs=3, epochs=3)) == [
        ("warm-up", 0, 3, 0.01, None)
    ]
    # from scratch every layer trains from the first epoch; warmup_epochs does not apply
    scratch = dataclasses.replace(
        pretrained_params(weights, warmup_epochs=1, epochs=3), model=project_params().model
    )
    assert project_params().model.weights is None
    assert phase_list(scratch) == [("train", 0, 3, 0.01, "all")]


def backbone_weights(root, layer_filter):
    model = keras.saving.load_model(root / "models/trained/resnet50/model.keras")
    layers = model.get_layer("backbone").layers
    return [w for layer in layers if layer_filter(layer) for w in layer.get_weights()]


@pytest.mark.slow  # trains
def test_pretrained_fine_tuning_runs_the_top_blocks_at_the_lower_rate_with_batchnorm_frozen(
    weights_file, tmp_path, monkeypatch
):
    path, source = weights_file
    enter_project(monkeypatch, tmp_path)
    make_prepared(tmp_path, per_split={"train": 4, "val": 2, "test": 2})
    params = pretrained_params(path, warmup_epochs=1, epochs=2)
    augment.run(params)
    summary = train.run(params, "resnet50")
    history = pd.read_csv(tmp_path / "reports/train/resnet50/history.csv")
    assert list(history.epoch) == [1, 2]
    np.testing.assert_allclose(history.learning_rate, [0.01, 0.0001], rtol=1e-5)
    assert summary["val_macro_f1"] == history.val_macro_f1.max()
    # ImageNet statistics intact: BatchNorm frozen and in inference mode in both phases
    is_bn = lambda layer: isinstance(layer, keras.layers.BatchNormalization)  # noqa: E731
    originals = [w for layer in source.layers if is_bn(layer) for w in layer.get_weights()]
    for saved, original in zip(backbone_weights(tmp_path, is_bn), originals, strict=True):
        np.testing.assert_array_equal(saved, original)
    # below the two unfrozen blocks nothing moved, whichever epoch was best
    frozen = {
        layer.name
        for name, layers in backbones.backbone_blocks(source)
        if name not in ("conv5_block2", "conv5_block3")
        for layer in layers
    }
    below = [w for layer in source.layers if layer.name in frozen for w in layer.get_weights()]
    saved = backbone_weights(tmp_path, lambda layer: layer.name in frozen)
    for a, b in zip(saved, below, strict=True):
        np.testing.assert_array_equal(a, b)


def tiny_classifier() -> keras.Model:
    """Two named 'blocks' and the layer names train expects, small enough to fit in a second."""
    backbone = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv2_block1_1_conv"),
            keras.layers.BatchNormalization(name="conv2_block1_1_bn"),
            keras.layers.Conv2D(4, 3, name="conv3_block1_1_conv"),
        ],
        name="backbone",
    )
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs, training=False))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(x))


def tiny_fit(train_params: dict, weights: str | None = "imagenet"):
    """`phases.fit` as train.run calls it: inside an MLflow run (see the `tiny_run` fixture)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    params = project_params({"model": {"weights": weights}, "train": train_params})
    batches = TrainBatches(images, labels, 3, 4, seed=0)
    val = ImageSet(images[:6], labels[:6], [f"v{i}.png" for i in range(6)])
    model = tiny_classifier()
    before = [w.copy() for w in model.get_layer("backbone").get_weights()]
    history, best_epoch = phases.fit(model, batches, val, params, "resnet50")
    return model, before, history, best_epoch


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    enter_project(monkeypatch, tmp_path)
    with mlflow.start_run() as run:
        yield run


@pytest.mark.slow  # trains
def test_warm_up_trains_the_head_on_a_frozen_backbone(tiny_run):
    model, before, history, _ = tiny_fit(
        {
            "batch_size": 4,
            "backbones": {"resnet50": {"warmup_epochs": 2, "epochs": 2, "learning_rate": 0.1}},
        }
    )
    assert len(history) == 2
    for a, b in zip(model.get_layer("backbone").get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # trains
def test_a_diverged_training_is_a_clear_error(tiny_run, monkeypatch):
    metrics_end = callbacks.ValidationMetrics.on_epoch_end

    def diverged(self, epoch, logs=None):
        metrics_end(self, epoch, logs)
        logs["val_loss"] = float("nan")

    monkeypatch.setattr(callbacks.ValidationMetrics, "on_epoch_end", diverged)
    with pytest.raises(UserError, match="train.monitor: val_loss was not a finite number in any"):
        tiny_fit(
            {"batch_size": 4, "monitor": "val_loss", "backbones": {"resnet50": {"epochs": 2}}}, None
        )
