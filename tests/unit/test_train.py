"""Training writes a self-contained model, its history, and one fully tracked MLflow run."""

import dataclasses
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model
from sklearn.metrics import f1_score

from pipeline import augment, backbones, train
from pipeline.batches import TrainBatches
from pipeline.config import Params
from pipeline.datasets import ImageSet, load_set
from pipeline.errors import UserError
from pipeline.paths import PREPARED
from tests.factories import enter_project, make_prepared, project_params

TINY = {
    "prepare": {"image_size": 32},
    "train": {
        "batch_size": 8,
        "run_eagerly": True,  # no graph tracing of ResNet50/DenseNet121: seconds, not minutes
        "schedule": "cosine",
        "backbones": {"resnet50": {"epochs": 2}, "densenet121": {"epochs": 1}},
    },
    "mlflow": {"experiment": "unit-test"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        make_prepared(root, per_split={"train": 4, "val": 2, "test": 2})
        params = project_params(TINY)
        augment.run(params)
        summary = train.run(params, "resnet50")
        yield root, params, summary


@pytest.mark.slow  # trains
def test_model_and_run_record_are_written(trained):
    root, _, _ = trained
    folder = root / "models" / "resnet50"
    model = keras.saving.load_model(folder / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (3, 40, 40, 3)).astype("float32")
    assert model.predict(images, verbose=0).shape == (3, 3)
    assert getattr(model, "optimizer", None) is None  # served, never resumed: no optimizer state
    # the classes travel in params.yaml and the release, not in a file nothing reads
    assert {f.name for f in folder.iterdir()} == {"model.keras", "run.json"}
    assert set(json.loads((folder / "run.json").read_text())) == {"run_id", "experiment_id"}


@pytest.mark.slow  # trains
def test_history_has_one_row_per_epoch_with_whole_val_set_macro_f1(trained):
    root, _, summary = trained
    history = pd.read_csv(root / "reports/train/resnet50/history.csv")
    assert list(history.epoch) == [1, 2]  # as Keras prints them: "Epoch 1/2"
    best_row = history.loc[history.val_macro_f1.idxmax()]
    assert summary["best_epoch"] == best_row.epoch  # the epoch Keras showed as "Epoch k/2"
    for column in ("loss", "accuracy", "val_loss", "val_macro_f1", "learning_rate"):
        assert history[column].notna().all(), column
    assert 0 <= summary["val_macro_f1"] <= 1
    assert summary["val_macro_f1"] == history.val_macro_f1.max()
    assert history.learning_rate[1] < history.learning_rate[0]  # cosine decay within the phase
    assert (root / "reports/train/resnet50/curves.png").stat().st_size > 0


@pytest.mark.slow  # trains
def test_committed_training_reports_hold_nothing_that_changes_between_reruns(trained):
    """Timings differ on every run of the same code: they belong to MLflow, not to git."""
    root, _, summary = trained
    history = pd.read_csv(root / "reports/train/resnet50/history.csv")
    saved = json.loads((root / "reports/train/resnet50/metrics.json").read_text())
    assert saved == summary
    for names in (list(history.columns), list(saved)):
        assert not [n for n in names if "second" in n or "run_id" in n], names


@pytest.mark.slow  # trains
def test_mlflow_run_holds_params_epoch_metrics_tags_and_the_model(trained):
    root, _, _ = trained
    run_id = json.loads((root / "models/resnet50/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.data.params["arch"] == "resnet50"
    assert run.data.params["image_size"] == "32"
    assert run.data.tags["dvc_stage"] == "train@resnet50"  # the stage's name in dvc.yaml
    assert run.data.tags["data_kind"] in {"synthetic-demo", "user-data"}
    assert run.info.run_name == "resnet50"  # `<dvc experiment>/resnet50` inside `dvc exp run`
    steps = mlflow.MlflowClient().get_metric_history(run_id, "val_macro_f1")
    assert [m.step for m in steps] == [1, 2]
    assert {"best_epoch", "epochs_run", "train_seconds", "best_val_macro_f1"} <= set(
        run.data.metrics
    )
    # the first step's tracing and compilation, apart from the epochs' images/s
    assert 0 < run.data.metrics["compile_seconds"] < run.data.metrics["train_seconds"]
    assert not [k for k in run.data.metrics if k.startswith("best_best")]
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "manifest"
    assert len(dataset.dataset.digest) == 16
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    (logged,) = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    assert logged.name == "model"  # a LoggedModel: the Models tab lists it
    model = mlflow.keras.load_model(f"models:/{logged.model_id}")
    assert model.output_shape == (None, 3)
    local = mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}")
    mlmodel = Model.load(local)
    assert set(mlmodel.flavors) == {"keras", "python_function"}  # plain Keras: no serving code
    assert not (Path(local) / "code").exists()
    assert tuple(mlmodel.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 32, 32, 3)


@pytest.mark.slow  # trains
def test_the_saved_model_is_the_best_epoch_it_reports(trained):
    root, params, summary = trained
    model = keras.saving.load_model(root / "models/resnet50/model.keras")
    val = load_set(root / PREPARED, params.classes, split="val")
    predicted = model.predict(val.images, batch_size=8, verbose=0).argmax(axis=1)
    assert f1_score(val.labels, predicted, average="macro") == pytest.approx(
        summary["val_macro_f1"]
    )


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
            **TINY,
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


def phases(params: Params) -> list[tuple]:
    return [(p.name, p.first, p.last, p.learning_rate, p.unfreeze) for p in train.schedule(
        params, "resnet50"
    )]  # fmt: skip


def test_the_schedule_is_a_warm_up_on_a_frozen_backbone_then_fine_tuning_at_the_lower_rate():
    weights = "weights.h5"  # only its presence matters to the schedule
    assert phases(pretrained_params(weights, warmup_epochs=1, epochs=3)) == [
        ("warm-up", 0, 1, 0.01, None),
        ("fine-tune", 1, 3, 0.0001, 2),
    ]
    # no warm-up: fine-tuning from the first epoch, at the head's rate
    assert phases(pretrained_params(weights, warmup_epochs=0, epochs=3)) == [
        ("fine-tune", 0, 3, 0.01, 2)
    ]
    # warm-up for every epoch: the backbone never unfreezes
    assert phases(pretrained_params(weights, warmup_epochs=3, epochs=3)) == [
        ("warm-up", 0, 3, 0.01, None)
    ]
    # from scratch every layer trains from the first epoch; warmup_epochs does not apply
    scratch = dataclasses.replace(
        pretrained_params(weights, warmup_epochs=1, epochs=3), model=project_params().model
    )
    assert project_params().model.weights is None
    assert phases(scratch) == [("train", 0, 3, 0.01, "all")]


def backbone_weights(root, layer_filter):
    model = keras.saving.load_model(root / "models/resnet50/model.keras")
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


def tiny_model() -> keras.Model:
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


def test_best_weights_are_kept_across_phases_and_restored_at_the_end():
    model = tiny_model()
    best = train.BestWeights("val_macro_f1")
    best.set_model(model)
    warm_up = model.get_weights()
    best.on_epoch_end(0, {"val_macro_f1": 0.9})
    model.set_weights([w + 1 for w in warm_up])
    best.on_train_begin()  # the fine-tuning phase is a second fit call
    best.on_epoch_end(1, {"val_macro_f1": 0.5})
    best.restore()
    assert best.epoch == 0
    for a, b in zip(model.get_weights(), warm_up, strict=True):
        np.testing.assert_array_equal(a, b)


def test_best_weights_on_val_loss_prefer_lower_and_skip_non_finite_values():
    model = tiny_model()
    best = train.BestWeights("val_loss")
    best.set_model(model)
    for epoch, loss in enumerate([float("nan"), 0.8, 0.3, float("inf"), 0.5]):
        best.on_epoch_end(epoch, {"val_loss": loss})
    assert (best.epoch, best.best) == (2, 0.3)


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
    """`train._fit` as train.run calls it: inside an MLflow run (see the `tiny_run` fixture)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    params = project_params({"model": {"weights": weights}, "train": train_params})
    batches = TrainBatches(images, labels, 3, 4, seed=0)
    val = ImageSet(images[:6], labels[:6], [f"v{i}.png" for i in range(6)])
    model = tiny_classifier()
    before = [w.copy() for w in model.get_layer("backbone").get_weights()]
    history, best_epoch = train._fit(model, batches, val, params, "resnet50")
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
    metrics_end = train.ValidationMetrics.on_epoch_end

    def diverged(self, epoch, logs=None):
        metrics_end(self, epoch, logs)
        logs["val_loss"] = float("nan")

    monkeypatch.setattr(train.ValidationMetrics, "on_epoch_end", diverged)
    with pytest.raises(UserError, match="train.monitor: val_loss was not a finite number in any"):
        tiny_fit(
            {"batch_size": 4, "monitor": "val_loss", "backbones": {"resnet50": {"epochs": 2}}}, None
        )


@pytest.mark.slow  # trains
def test_same_seed_same_validation_score(trained, tmp_path, monkeypatch):
    root, params, summary = trained
    enter_project(monkeypatch, tmp_path)
    make_prepared(tmp_path, per_split={"train": 4, "val": 2, "test": 2})
    augment.run(params)
    again = train.run(dataclasses.replace(params), "resnet50")
    assert again["val_macro_f1"] == pytest.approx(summary["val_macro_f1"], abs=1e-6)


def test_an_arch_not_in_train_backbones_is_one_line_naming_them(capsys):
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert train.main(["--arch", "vgg16", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --arch: unknown backbone 'vgg16'; train.backbones has [")
    assert err.count("\n") == 1


def test_params_default_is_usable():
    assert project_params().train.arch("densenet121").epochs >= 1


def test_an_epoch_line_fits_in_120_columns_and_says_what_it_shows():
    """Keras' own epoch log lists every metric (201 columns at the demo): one line of ours is all
    `make demo` prints per epoch, within 120 columns for 999 epochs and slow or fast machines."""
    logs = {
        "loss": 2.302585, "accuracy": 0.3333, "val_loss": 10.25, "val_accuracy": 0.5,
        "val_macro_f1": 0.41, "learning_rate": 1e-4, "epoch_seconds": 999.4,
        "images_per_second": 9999.4,
    }  # fmt: skip
    line = train.epoch_line("densenet121", 999, 999, logs)
    assert len(line) <= 120, line
    for shown in ("epoch 999/999", "macro-F1 0.410", "lr 1e-04", "loss 2.3 ", "val loss 10.2 "):
        assert shown in line
    assert "9999 img/s" in line
    assert train.epoch_line("resnet50", 1, 5, {}).count(" - ") >= 3  # missing figures: a dash


def test_mixed_precision_is_set_for_one_training_only_even_when_it_fails():
    assert keras.mixed_precision.global_policy().name == "float32"
    seen = []

    def failing_training():
        with train._dtype_policy("mixed_bfloat16"):
            seen.append(keras.mixed_precision.global_policy().name)
            raise RuntimeError("training failed")

    with pytest.raises(RuntimeError):
        failing_training()
    assert seen == ["mixed_bfloat16"]
    assert keras.mixed_precision.global_policy().name == "float32"
