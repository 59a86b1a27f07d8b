"""The engines: a released model's file -> probabilities for decoded images.

`KerasEngine` runs model.keras; `OnnxEngine` runs model.onnx (pipeline.export) with ONNX Runtime
and imports neither Keras nor TensorFlow, so a CPU endpoint can ship without them (heat maps need
Keras' layers: an ONNX engine answers without them). Both have one interface (`prepare`,
`probabilities`, `pooled_and_probabilities`, `warm_up`, `n_outputs`) and fit images the same way.

Why the image is fitted here and not only inside the model: the model's own `resize` layer takes
any size, but the training images were fitted by `prepare` with Pillow's Lanczos filter to the
same square size (letterboxed), and the model's bilinear resize of a full-size upload would alias.
Fitting the same way makes a served image look like a training image, and a fixed input shape
means the predict function is traced once, not once per upload size. Normalisation stays in the
model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipeline import images
from pipeline.layers import RESIZE
from pipeline.serving.ood import pool

if TYPE_CHECKING:
    import keras
    import onnxruntime as ort


class _Fitting:
    """The image fitting both engines share, so that both see the same pixels."""

    input_size: tuple[int, int] | None  # (height, width) the model was trained at; None: any
    keep_aspect: bool  # letterboxed to a square as in prepare, or stretched

    def prepare(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """An 8-bit RGB or grey image -> (H, W, 3) float32 of 0-255 values, fitted as in prepare.

        A scan is grey even when its file is RGB (BUSI's PNGs, most exports): fitted as one grey
        channel and copied to three at the end, it gives the same values for a third of the
        resizing (bench/serve_engines.py's per-stage split)."""
        pil = (
            image
            if isinstance(image, Image.Image)
            else Image.fromarray(np.asarray(image, np.uint8))
        )
        pil = _grey_if_grey(pil)
        if self.input_size is not None:
            height, width = self.input_size
            if height == width:
                pil = images.fit(pil, height, keep_aspect=self.keep_aspect)
            elif pil.size != (width, height):
                pil = pil.resize((width, height), Image.Resampling.LANCZOS)
        if pil.mode == "L":
            return np.repeat(np.asarray(pil, dtype=np.float32)[..., None], 3, axis=2)
        return np.asarray(images.to_rgb(pil), dtype=np.float32)


def _grey_if_grey(image: Image.Image) -> Image.Image:
    """An RGB image whose three channels are equal, as its one grey channel (`L`); else as is."""
    if image.mode != "RGB":
        return image
    red, green, blue = (channel.tobytes() for channel in image.split())
    return image.getchannel(0) if red == green == blue else image


class KerasEngine(_Fitting):
    """A loaded Keras classifier and the input geometry it was trained with."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.features: keras.Model | None = None  # cam.feature_model, built on first use
        self.input_size: tuple[int, int] | None = None
        self.keep_aspect = True
        try:
            config = model.get_layer(RESIZE).get_config()
        except ValueError:
            return  # not a pipeline.backbones model: images go in at their own size
        self.input_size = (int(config["height"]), int(config["width"]))
        self.keep_aspect = bool(config.get("pad_to_aspect_ratio", False))

    draws_heatmaps = True  # the page's class activation maps need the Keras layers

    @classmethod
    def load(cls, path: Path) -> KerasEngine:
        """Load model.keras for inference (not compiled: serving needs no optimizer)."""
        import keras  # here, not at import: the ONNX engine must not pull in Keras

        return cls(keras.saving.load_model(path, compile=False))

    @property
    def n_outputs(self) -> int:
        """Number of classes the model outputs, to check the release's rule against."""
        return int(self.model.outputs[0].shape[-1])

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) of a prepared batch (N, H, W, 3).

        `predict_on_batch` skips the dataset machinery of `model.predict`, which costs more than a
        small model's forward pass.
        """
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float64)

    def pooled_and_probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pooled backbone features (N, C), probabilities (N, K)) of a prepared batch, in one
        forward pass of the model's own layers (pipeline.cam.feature_model): the OOD score needs
        the features, the decision rule the probabilities."""
        if self.features is None:
            from pipeline import cam

            self.features = cam.feature_model(self.model)
        features, proba = self.features.predict_on_batch(batch)
        return pool(features), np.asarray(proba, dtype=np.float64)

    def warm_up(self, features: bool = False) -> None:
        """Trace the predict function once (the feature model's too when the OOD check needs
        it), so the first request is not the slow one."""
        height, width = self.input_size or (64, 64)
        zeros = np.zeros((1, height, width, 3), dtype=np.float32)
        if features:
            self.pooled_and_probabilities(zeros)
        else:
            self.probabilities(zeros)


ONNX_OUTPUTS = ("pooled", "probabilities")  # pipeline.export names the graph's outputs so
# ONNX Runtime runs a batch in chunks of at most this many input pixels (4 images at 224 px,
# 49 at 64 px): beyond a few 224 px images the activations outgrow the CPU's caches and every
# image costs more, INT8's float concatenations most. Batch of 32 at 224 px, untrained
# DenseNet121, in one call / in chunks: float 1045 / 953 ms, INT8 613 / 479 ms (`make
# bench-quantize BENCH_ARGS="--speed 224"`, quiet 2-core machine, 2026-12-05; chunks of 2 and 8
# were no better in a one-off timing).
CHUNK_PIXELS = 4 * 224 * 224


class OnnxEngine(_Fitting):
    """model.onnx in an ONNX Runtime session, with the input geometry from the file's metadata."""

    draws_heatmaps = False  # class activation maps need the Keras layers

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        outputs = [out.name for out in session.get_outputs()]
        if outputs != list(ONNX_OUTPUTS):
            raise ValueError(f"ONNX outputs {outputs}; expected {list(ONNX_OUTPUTS)}")
        meta = session.get_modelmeta().custom_metadata_map
        self.input_size: tuple[int, int] | None = None
        if "input_height" in meta:
            self.input_size = (int(meta["input_height"]), int(meta["input_width"]))
        self.keep_aspect = meta.get("keep_aspect", "true") == "true"

    @classmethod
    def load(cls, path: Path, threads: int | None = None) -> OnnxEngine:
        """A CPU session; `threads` caps its intra-op threads (None: ONNX Runtime's default, one
        per physical core), so two workers on one host need not fight over the cores."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle pool threads sleep instead of spinning, so between requests they leave the cores
        # to the server's own threads (service/onnx over ONNX Runtime alone at 224 px: +59 ms
        # spinning, +15 ms not, bench/serve_engines.py on 2 shared cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(session)

    @property
    def n_outputs(self) -> int:
        """Number of classes the graph outputs, to check the release's rule against."""
        return int(self.session.get_outputs()[1].shape[-1])

    def pooled_and_probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pooled backbone features (N, C), probabilities (N, K)): the graph's two outputs, run
        in chunks of CHUNK_PIXELS."""
        x = np.asarray(batch, dtype=np.float32)
        step = max(1, CHUNK_PIXELS // max(1, x.shape[1] * x.shape[2]))
        runs = [
            self.session.run(None, {self.input_name: x[start : start + step]})
            for start in range(0, max(len(x), 1), step)  # an empty batch: one empty run
        ]
        pooled, proba = (np.concatenate(outputs) for outputs in zip(*runs, strict=True))
        return np.asarray(pooled, dtype=np.float64), np.asarray(proba, dtype=np.float64)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) of a prepared batch (N, H, W, 3)."""
        return self.pooled_and_probabilities(batch)[1]

    def warm_up(self, features: bool = False) -> None:
        """One run, so the first request does not pay for ONNX Runtime's lazy allocations."""
        height, width = self.input_size or (64, 64)
        self.probabilities(np.zeros((1, height, width, 3), dtype=np.float32))
