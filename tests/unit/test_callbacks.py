"""What each epoch records: the best weights across phases, one line within 120 columns."""

import keras
import numpy as np

from pipeline import callbacks


def tiny_model() -> keras.Model:
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


def test_best_weights_are_kept_across_phases_and_restored_at_the_end():
    model = tiny_model()
    best = callbacks.BestWeights("val_macro_f1")
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
    best = callbacks.BestWeights("val_loss")
    best.set_model(model)
    for epoch, loss in enumerate([float("nan"), 0.8, 0.3, float("inf"), 0.5]):
        best.on_epoch_end(epoch, {"val_loss": loss})
    assert (best.epoch, best.best) == (2, 0.3)


def test_an_epoch_line_fits_in_120_columns_and_says_what_it_shows():
    """Keras' own epoch log lists every metric (201 columns at the demo): one line of ours is all
    `make demo` prints per epoch, within 120 columns for 999 epochs and slow or fast machines."""
    logs = {
        "loss": 2.302585, "accuracy": 0.3333, "val_loss": 10.25, "val_accuracy": 0.5,
        "val_macro_f1": 0.41, "learning_rate": 1e-4, "epoch_seconds": 999.4,
        "images_per_second": 9999.4,
    }  # fmt: skip
    line = callbacks.epoch_line("densenet121", 999, 999, logs)
    assert len(line) <= 120, line
    for shown in ("epoch 999/999", "macro-F1 0.410", "lr 1e-04", "loss 2.3 ", "val loss 10.2 "):
        assert shown in line
    assert "9999 img/s" in line
    assert callbacks.epoch_line("resnet50", 1, 5, {}).count(" - ") >= 3  # missing figures: a dash
