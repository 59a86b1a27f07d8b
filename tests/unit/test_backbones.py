"""The classifier carries its own resizing and preprocessing and loads local weight files."""

import keras
import numpy as np
import pytest

from pipeline import backbones, quantize
from pipeline import layers as layer_names
from pipeline.errors import UserError

CLASSES = ("benign", "malignant", "normal")


@pytest.fixture(scope="module")
def resnet():
    return backbones.build_classifier("resnet50", 32, CLASSES)


@pytest.fixture(scope="module")
def densenet():
    """Built once for the module (2 s of CPU each); no test here changes it."""
    return backbones.build_classifier("densenet121", 32, CLASSES)


@pytest.mark.slow  # runs ResNet50 at five input sizes (~5 s): out of the quick loop
def test_model_takes_raw_images_of_any_size_and_returns_probabilities(resnet):
    for shape in [(2, 32, 32, 3), (1, 50, 40, 3)]:
        proba = resnet.predict(np.random.uniform(0, 255, shape).astype("float32"), verbose=0)
        assert proba.shape == (shape[0], 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_layer_names_are_the_contract_for_class_activation_maps(resnet):
    names = [layer.name for layer in resnet.layers]
    assert [name for name in names if name in layer_names.CONTRACT] == list(
        layer_names.CONTRACT
    )  # in order
    pool, backbone = resnet.get_layer(layer_names.POOL), resnet.get_layer(layer_names.BACKBONE)
    assert pool.input.shape[-1] == backbone.output.shape[-1]


def test_both_backbones_name_their_last_stage_as_int8_expects(resnet, densenet):
    """INT8 keeps the stage named quantize.FLOAT_STAGE in float: in each backbone it is the
    final run of layers, at the smallest feature map, up to the backbone's output."""
    for model in (resnet, densenet):
        backbone = model.get_layer(layer_names.BACKBONE)
        names = [layer.name for layer in backbone.layers]
        first = next(i for i, name in enumerate(names) if name.startswith(quantize.FLOAT_STAGE))
        stage = backbone.layers[first:]
        assert not any(name.startswith(("conv2_", "conv3_", "conv4_")) for name in names[first:])
        side = backbone.output.shape[1]
        assert all(layer.output.shape[1] == side for layer in stage[1:]), backbone.name


def test_resnet_preprocessing_matches_keras_caffe_mode(resnet):
    image = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    ours = keras.Model(resnet.input, resnet.get_layer("preprocess").output).predict(
        image, verbose=0
    )
    expected = keras.applications.resnet50.preprocess_input(image.copy())
    np.testing.assert_allclose(ours, expected, atol=1e-3)


def test_densenet_preprocessing_matches_keras_torch_mode(densenet):
    model = densenet
    image = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    ours = keras.Model(model.input, model.get_layer("preprocess").output).predict(image, verbose=0)
    expected = keras.applications.densenet.preprocess_input(image.copy())
    np.testing.assert_allclose(ours, expected, atol=1e-3)


@pytest.mark.slow  # builds ResNet50 twice (~5 s): out of the quick loop
def test_a_local_weights_file_loads_the_same_numbers(tmp_path):
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(path)
    model = backbones.build_classifier("resnet50", 32, CLASSES, weights=str(path))
    loaded = model.get_layer("backbone").get_weights()
    for a, b in zip(source.get_weights(), loaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_missing_weights_file_names_the_file_keras_expects(tmp_path):
    with pytest.raises(UserError, match="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        backbones.build_classifier("resnet50", 32, CLASSES, weights=str(tmp_path / "missing.h5"))


def test_unreachable_imagenet_download_fails_early_with_the_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", offline)
    with pytest.raises(UserError) as info:
        backbones.build_classifier("resnet50", 32, CLASSES, weights="imagenet")
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message
    assert "null" in message


def test_backbone_blocks_are_keras_blocks_in_order_with_every_layer_once(resnet):
    base = resnet.get_layer("backbone")
    blocks = backbones.backbone_blocks(base)
    names = [name for name, _ in blocks]
    assert names[:3] == ["stem", "conv2_block1", "conv2_block2"]
    assert names[-1] == "conv5_block3"
    assert len(names) == 1 + 16
    assert [layer for _, layers in blocks for layer in layers] == base.layers
    for name, layers in blocks[1:]:
        assert all(layer.name.startswith(name + "_") for layer in layers)


def test_densenet_transitions_and_final_norm_join_the_block_below_them(densenet):
    base = densenet.get_layer("backbone")
    blocks = dict(backbones.backbone_blocks(base))
    assert len(blocks) == 1 + 58  # 6 + 12 + 24 + 16 dense layers
    assert [layer.name for layer in blocks["conv2_block6"][-4:]] == [
        "pool2_bn",
        "pool2_relu",
        "pool2_conv",
        "pool2_pool",
    ]
    assert [layer.name for layer in blocks["conv5_block16"][-2:]] == ["bn", "relu"]


def test_fine_tuning_the_top_blocks_cuts_between_blocks_and_keeps_batchnorm_frozen(resnet):
    unfrozen = backbones.set_backbone_trainable(resnet, 2, freeze_batchnorm=True)
    assert unfrozen == ["conv5_block2", "conv5_block3"]
    for name, layers in backbones.backbone_blocks(resnet.get_layer("backbone")):
        for layer in layers:
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            assert layer.trainable == (name in unfrozen and not is_bn), layer.name


def test_unfreezing_all_or_more_blocks_than_exist_trains_the_whole_backbone(resnet):
    base = resnet.get_layer("backbone")
    assert len(backbones.set_backbone_trainable(resnet, 500, freeze_batchnorm=True)) == 17
    assert all(
        layer.trainable
        for layer in base.layers
        if not isinstance(layer, keras.layers.BatchNormalization)
    )
    backbones.set_backbone_trainable(resnet, "all", freeze_batchnorm=False)
    assert all(layer.trainable for layer in base.layers)
    assert backbones.set_backbone_trainable(resnet, 0, freeze_batchnorm=True) == []
    assert not any(layer.trainable for layer in base.layers)


def test_the_copy_for_saving_predicts_the_same_without_optimizer_state(tmp_path):
    # a small dense model: the copy is generic (train's tests save the real classifier with it)
    inputs = keras.Input((256,))
    trained = keras.Model(inputs, keras.layers.Dense(256, name="dense")(inputs))
    trained.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(8, 256)).astype("float32")
    trained.fit(x, x, epochs=1, verbose=0)
    copy = backbones.for_inference(trained)
    np.testing.assert_array_equal(copy.predict(x, verbose=0), trained.predict(x, verbose=0))
    copy.save(tmp_path / "served.keras")
    trained.save(tmp_path / "trained.keras")
    assert getattr(keras.saving.load_model(tmp_path / "served.keras"), "optimizer", None) is None
    served, full = ((tmp_path / name).stat().st_size for name in ("served.keras", "trained.keras"))
    assert served < full / 2  # Adam keeps two moments per weight


def test_from_scratch_batchnorm_statistics_follow_training_quickly(densenet):
    norms = [
        layer
        for layer in densenet.get_layer("backbone").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms
    assert all(layer.momentum == 0.9 for layer in norms)


def test_unknown_backbone_is_a_user_error():
    with pytest.raises(UserError, match="unknown backbone 'vgg16'"):
        backbones.build_classifier("vgg16", 32, CLASSES)


@pytest.mark.slow  # builds a full backbone in bfloat16 (~7 s): out of the quick loop
def test_mixed_precision_keeps_probabilities_in_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = backbones.build_classifier("resnet50", 32, CLASSES)
        proba = model.predict(np.full((2, 32, 32, 3), 128, "float32"), verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("backbone").compute_dtype == "bfloat16"
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
