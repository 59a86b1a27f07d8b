"""params.yaml -> frozen dataclasses, validated once.

Every stage reads its parameters through `load_params`, so a typo or a wrong type stops the run
before any work with a message that names the key (`train.batch_size: expected int, got 'x'`).
The dataclasses hold no defaults: params.yaml is the one place a value lives, so a params file
that lacks a key (a variant written before the key existed) stops with the key named, instead of
running on a value nobody chose. Types and keys are checked here; the ranges and relations
between values (`prepare.test_fraction` leaving room to train, ...) in `param_checks`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import UserError
from pipeline.param_checks import check_values


@dataclass(frozen=True)
class DemoParams:
    """`demo:` in params.yaml: the synthetic demo set `demo_data` draws."""

    out_dir: str
    images: int
    size: int
    # a second synthetic "site" with another scanner look, for the external stage's demo
    external_dir: str
    external_images: int


@dataclass(frozen=True)
class ExternalSet:
    """One entry of `data.external`: another site's images, scored apart and never trained on."""

    name: str  # names its reports: reports/external/sites/<name>/
    path: str  # a folder (BUSI layout or class folders) or a CSV, under data/external/
    group_column: str | None  # the CSV's patient/study id column (null: the usual names)


@dataclass(frozen=True)
class DataParams:
    """`data:` in params.yaml: where the raw images are and how patients are grouped."""

    raw_dir: str
    exclude: str  # path,reason (path may be a glob): left out before splitting
    group_column: str | None  # CSV patient/study column (None: patient_id / study_id)
    id_salt: str  # patient/study ids are hashed with it before any use
    external: tuple[ExternalSet, ...]  # external validation sets (pipeline.external)


@dataclass(frozen=True)
class PrepareParams:
    """`prepare:` in params.yaml: image size, split fractions and the duplicate detector's
    limits."""

    image_size: int
    keep_aspect: bool
    val_fraction: float
    test_fraction: float
    phash_threshold: int
    keypoint_inliers: int
    keypoint_correlation: float
    keypoint_candidates: int
    conflict_policy: Literal["drop", "majority"]
    max_reject_fraction: float
    max_pixels: int
    dicom_frames: Literal["refuse", "first", "middle"]  # multi-frame DICOM (cine loops)
    dicom_region_crop: bool  # crop DICOM to the Sequence of Ultrasound Regions' B-mode image


@dataclass(frozen=True)
class AugmentParams:
    """`augment:` in params.yaml: how many train images per class and the random transforms."""

    target_per_class: int | Literal["max"]
    flip: bool
    rotation_deg: float
    zoom: float
    brightness: float
    contrast: float
    speckle: float


@dataclass(frozen=True)
class ModelParams:
    """`model:` in params.yaml: the backbone's starting weights and the head's dropout."""

    weights: str | None
    dropout: float


@dataclass(frozen=True)
class ArchParams:
    """`train.<arch>:` in params.yaml: one backbone's warm-up and fine-tuning schedule."""

    warmup_epochs: int
    epochs: int
    learning_rate: float
    fine_tune_learning_rate: float
    unfreeze: int | Literal["all"]


@dataclass(frozen=True)
class TrainParams:
    """`train:` in params.yaml: what both backbones share (batch, optimizer, schedule, early
    stop)."""

    batch_size: int
    optimizer: Literal["adam", "adamw", "sgd"]
    schedule: Literal["constant", "cosine"]
    weight_decay: float
    label_smoothing: float
    class_weights: bool
    monitor: Literal["val_macro_f1", "val_accuracy", "val_loss"]
    patience: int
    augment_on_the_fly: bool
    loader_workers: int
    loader_kind: Literal["threads", "processes"]
    run_eagerly: bool
    mixed_precision: Literal["mixed_bfloat16", "mixed_float16"] | None
    distribution: Literal["data_parallel"] | None
    # One model per entry, in this order: a `train@<name>` stage each (dvc.yaml's foreach),
    # built by pipeline/backbones.py's builder of that name; evaluate and select take them all.
    backbones: dict[str, ArchParams]

    def arch(self, name: str) -> ArchParams:
        """The schedule of backbone `name`; UserError naming --arch and the choices for an unknown
        one."""
        if name not in self.backbones:
            raise UserError(
                f"--arch: unknown backbone {name!r}; train.backbones has {list(self.backbones)}"
            )
        return self.backbones[name]


@dataclass(frozen=True)
class EvaluateParams:
    """`evaluate:` in params.yaml: bootstrap, operating point, calibration and figure counts."""

    bootstrap: int
    target_sensitivity: float
    samples_per_class: int
    temperature_scaling: bool
    ece_bins: int
    gradcam_per_class: int
    threshold_confidence: float
    prevalence: float
    temperature_min_improvement: float
    # bounds of the temperature search; a fit on the lower bound is not served (docs/statistics.md)
    temperature_range: tuple[float, ...]
    ood_accept: float
    ood_images: int


@dataclass(frozen=True)
class SelectParams:
    """`select:` in params.yaml: the metric that picks the winner, and the registry name and
    alias."""

    metric: str
    model_name: str
    alias: str
    register: bool  # False: select logs the release but registers nothing
    int8: bool  # also quantize model.onnx to INT8 and serve it if it passes the gate
    int8_margin: float  # largest flag-sensitivity loss (INT8 - float) INT8 may show


@dataclass(frozen=True)
class CardParams:
    """`card:` in params.yaml: what the model card states about the data, each fact as its
    provider states it or "not stated" (the card fills in nothing; params-busi.yaml sets BUSI's)."""

    data: str
    licence: str
    ethics: str
    site: str
    population: str
    prevalence: str
    citation: str


@dataclass(frozen=True)
class PromoteParams:
    """Gates for moving `alias` (champion) to the `select.alias` (challenger) version.

    Measured on the test images neither model saw: absolute floors, and paired non-inferiority
    of macro-F1 within `margin` of the champion (pipeline.promote).
    """

    alias: str
    min_macro_f1: float
    min_malignant_sensitivity: float
    min_coverage: float  # share of held-out test images answered (not out of scope)
    margin: float
    min_test_images: int
    external_gate: bool  # true: every external site must also clear the two floors


@dataclass(frozen=True)
class MonitorParams:
    """`python -m pipeline.monitor`: the prediction log's window against the release's reference."""

    log_dir: str
    model: str
    report_dir: str
    window_days: int
    min_answers: int
    alpha: float
    max_psi: float
    max_ood_rate: float


@dataclass(frozen=True)
class MlflowParams:
    """`mlflow:` in params.yaml: the experiment the runs go to, and whether system metrics are
    sampled."""

    experiment: str
    # CPU, memory (and GPU where present) sampled during training into the run's system/*
    # metrics: off by default, since the sampler thread costs a little on small CPU machines.
    system_metrics: bool


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml, validated once by `load_params`: the one source of truth."""

    seed: int
    classes: tuple[str, ...]
    positive_class: str  # the class the operating point, the refer flag and promotion care about
    demo: DemoParams
    data: DataParams
    prepare: PrepareParams
    augment: AugmentParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    select: SelectParams
    card: CardParams
    promote: PromoteParams
    mlflow: MlflowParams
    monitor: MonitorParams


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise UserError naming the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found; run from the project root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    params = parse_params(raw)
    return params


def parse_params(raw: Any) -> Params:
    """Build Params from a plain dict (as read from YAML) and check the values that types can't."""
    params = _build(Params, raw, "")
    check_values(params)
    return params


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise UserError(f"{key}: unknown parameter; allowed here: {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw]
    if missing:
        raise UserError(
            f"{prefix}{missing[0]}: missing; every parameter is set in the params file "
            "(copy it from the project's params.yaml)"
        )
    values = {name: _coerce(hints[name], raw[name], f"{prefix}{name}") for name in raw}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(option, value, key)
            except UserError as exc:
                errors.append(str(exc).split(": ", 1)[1])
        raise UserError(f"{key}: {' or '.join(errors)}")
    if hint is type(None):
        if value is None:
            return None
        raise UserError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value in allowed:
            return value
        raise UserError(f"{key}: expected one of {list(allowed)}, got {value!r}")
    if origin is dict:
        return _coerce_mapping(typing.get_args(hint)[1], value, key)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        empty_ok = dataclasses.is_dataclass(item)  # a list of sections may be empty
        if not isinstance(value, list) or not (value or empty_ok):
            raise UserError(f"{key}: expected a non-empty list, got {value!r}")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str) and value:
            return value
        raise UserError(f"{key}: expected a non-empty string, got {value!r}")
    raise TypeError(f"unsupported type hint {hint!r} for {key}")  # a bug in this module


def _coerce_mapping(item: Any, value: Any, key: str) -> dict[str, Any]:
    """A mapping of names (used in paths and stage names) to `item` values, in file order."""
    if not isinstance(value, dict) or not value:
        raise UserError(f"{key}: expected a non-empty mapping, got {value!r}")
    for name in value:
        if not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]*", name)):
            raise UserError(f"{key}.{name}: names are lower-case letters, digits and _")
    return {name: _coerce(item, v, f"{key}.{name}") for name, v in value.items()}


NO_MODEL = (
    "no params.yaml here names the registered model; give a released model "
    "(models/selected, models:/<name>@<alias>) or set $MODEL"
)


def default_model_uri(path: str | Path = "params.yaml") -> str | None:
    """`models:/<select.model_name>@<promote.alias>`: what `make serve` and `make predict` use
    unless told otherwise; None outside a project folder (no params file names the model)."""
    if not Path(path).is_file():
        return None
    params = load_params(path)
    return f"models:/{params.select.model_name}@{params.promote.alias}"


def uses_demo_data(params: Params) -> bool:
    """True when the pipeline runs on the built-in synthetic set: every report must say so."""
    return Path(params.data.raw_dir).resolve() == Path(params.demo.out_dir).resolve()
