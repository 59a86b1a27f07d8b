"""params.yaml -> frozen dataclasses, validated once.

Every stage reads its parameters through `load_params`, so a typo or a wrong type stops the run
before any work with a message that names the key (`train.batch_size: expected int, got 'x'`).
The dataclasses hold no defaults: params.yaml is the one place a value lives, so a params file
that lacks a key (a variant written before the key existed) stops with the key named, instead of
running on a value nobody chose.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline import paths
from pipeline.errors import UserError


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
    min_side: int
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
    _check_values(params)
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


def _need(ok: bool, key: str, message: str) -> None:
    """Stop with one line naming the parameter when a check fails."""
    if not ok:
        raise UserError(f"{key}: {message}")


def _check_values(p: Params) -> None:
    """The ranges and relations that types cannot say, one function per params.yaml section (in
    the file's order, so the first bad key in the file is the one reported)."""
    _check_project(p)
    _check_external(p)
    _check_prepare(p.prepare)
    _check_augment(p.augment)
    _need(0 <= p.model.dropout < 1, "model.dropout", "must be within [0, 1)")
    _check_train(p.train)
    _check_evaluate(p.evaluate)
    _check_monitor(p.monitor)
    _need(0 < p.select.int8_margin < 0.5, "select.int8_margin", "must be within (0, 0.5)")
    _check_promote(p.promote, p.select)
    _need(
        p.positive_class in p.classes,
        "positive_class",
        f"must be one of classes {list(p.classes)} (the operating point needs it)",
    )


def _check_project(p: Params) -> None:
    _need(0 <= p.seed < 2**32, "seed", "must be within [0, 2**32)")
    _need(len(set(p.classes)) == len(p.classes) >= 2, "classes", "need at least two distinct names")
    _need(p.demo.images >= 30, "demo.images", "need at least 30 images")
    _need(p.demo.size >= 32, "demo.size", "need at least 32 pixels")
    _need(
        len(p.data.id_salt) >= 8,
        "data.id_salt",
        "need at least 8 characters; set a secret of your own per site (ids are hashed with it)",
    )


SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _check_external(p: Params) -> None:
    """`data.external`: distinct names usable as folder names, paths under data/external/ (the
    external stage's DVC dependency) and never the development data."""
    _need(p.demo.external_images >= 3, "demo.external_images", "need at least 3 images")
    names: set[str] = set()
    raw = Path(p.data.raw_dir).resolve()
    for i, site in enumerate(p.data.external):
        key = f"data.external[{i}]"
        _need(
            bool(SITE_NAME.match(site.name)),
            f"{key}.name",
            f"{site.name!r}: use lower-case letters, digits, '-' or '_' (it names a folder)",
        )
        _need(site.name not in names, f"{key}.name", f"{site.name!r} is used twice")
        names.add(site.name)
        _need(
            _under(site.path, str(paths.EXTERNAL_DATA)),
            f"{key}.path",
            f"{site.path!r} must be under {str(paths.EXTERNAL_DATA)}/ (the external stage's DVC "
            "dependency); move the folder or CSV there",
        )
        where = Path(site.path).resolve()
        _need(
            not (where.is_relative_to(raw) or raw.is_relative_to(where)),
            f"{key}.path",
            f"{site.path!r} overlaps data.raw_dir: external images must stay apart from "
            "development data",
        )


def _under(path: str, root: str) -> bool:
    """True when `path` is strictly inside the project-relative folder `root`."""
    return Path(path).resolve().is_relative_to(Path(root).resolve()) and (
        Path(path).resolve() != Path(root).resolve()
    )


def _check_prepare(pr: PrepareParams) -> None:
    _need(32 <= pr.image_size <= 1024, "prepare.image_size", "must be between 32 and 1024 pixels")
    _need(0 < pr.val_fraction < 0.5, "prepare.val_fraction", "must be between 0 and 0.5")
    _need(0 < pr.test_fraction < 0.5, "prepare.test_fraction", "must be between 0 and 0.5")
    _need(
        pr.val_fraction + pr.test_fraction < 0.8,
        "prepare.test_fraction",
        "val_fraction + test_fraction must leave at least 20% for training",
    )
    _need(0 <= pr.phash_threshold <= 32, "prepare.phash_threshold", "must be between 0 and 32 bits")
    _need(
        4 <= pr.keypoint_inliers <= 400,
        "prepare.keypoint_inliers",
        "must be between 4 and 400 (of 400 keypoints per image)",
    )
    _need(
        0 < pr.keypoint_correlation < 1,
        "prepare.keypoint_correlation",
        "must be within (0, 1)",
    )
    _need(1 <= pr.keypoint_candidates <= 50, "prepare.keypoint_candidates", "must be 1 to 50")
    _need(0 <= pr.max_reject_fraction <= 1, "prepare.max_reject_fraction", "must be within [0, 1]")
    _need(pr.min_side >= 1, "prepare.min_side", "must be positive")
    _need(pr.max_pixels > 0, "prepare.max_pixels", "must be positive")


def _check_augment(a: AugmentParams) -> None:
    _need(
        a.target_per_class == "max" or a.target_per_class > 0,
        "augment.target_per_class",
        "must be 'max' or a positive integer",
    )
    _need(0 <= a.rotation_deg <= 180, "augment.rotation_deg", "must be within [0, 180]")
    for name in ("zoom", "brightness", "contrast", "speckle"):
        _need(0 <= getattr(a, name) < 1, f"augment.{name}", "must be within [0, 1)")


def _check_train(t: TrainParams) -> None:
    _need(t.batch_size >= 1, "train.batch_size", "must be positive")
    _need(t.weight_decay >= 0, "train.weight_decay", "must not be negative")
    _need(0 <= t.label_smoothing < 1, "train.label_smoothing", "must be within [0, 1)")
    _need(t.patience >= 1, "train.patience", "must be positive")
    _need(1 <= t.loader_workers <= 64, "train.loader_workers", "must be within [1, 64]")
    for arch, ap in t.backbones.items():
        key = f"train.backbones.{arch}"
        _need(ap.epochs >= 1, f"{key}.epochs", "must be at least 1")
        _need(
            0 <= ap.warmup_epochs <= ap.epochs, f"{key}.warmup_epochs", "must be within [0, epochs]"
        )
        _need(ap.learning_rate > 0, f"{key}.learning_rate", "must be positive")
        _need(ap.fine_tune_learning_rate > 0, f"{key}.fine_tune_learning_rate", "must be positive")
        _need(ap.unfreeze == "all" or ap.unfreeze >= 0, f"{key}.unfreeze", "'all' or a count >= 0")


def _check_evaluate(e: EvaluateParams) -> None:
    _need(e.bootstrap >= 0, "evaluate.bootstrap", "must not be negative")
    _need(0 < e.target_sensitivity < 1, "evaluate.target_sensitivity", "must be within (0, 1)")
    _need(e.samples_per_class >= 0, "evaluate.samples_per_class", "must not be negative")
    _need(2 <= e.ece_bins <= 100, "evaluate.ece_bins", "must be between 2 and 100")
    _need(e.gradcam_per_class >= 0, "evaluate.gradcam_per_class", "must not be negative")
    _need(
        0.5 <= e.threshold_confidence < 1,
        "evaluate.threshold_confidence",
        "must be within [0.5, 1) (0.95: a one-sided 95% lower bound)",
    )
    _need(0 < e.prevalence < 1, "evaluate.prevalence", "must be within (0, 1)")
    _need(
        e.temperature_min_improvement >= 0,
        "evaluate.temperature_min_improvement",
        "must not be negative (nats per image)",
    )
    low, high = (*e.temperature_range, math.nan)[:2]
    _need(
        len(e.temperature_range) == 2 and 0 < low <= 1 <= high < math.inf,
        "evaluate.temperature_range",
        "must be [low, high] with 0 < low <= 1 <= high (T = 1 leaves probabilities as they are); "
        "the default is [0.5, 5.0]",
    )
    _need(
        0.5 <= e.ood_accept < 1,
        "evaluate.ood_accept",
        "must be within [0.5, 1) (0.95: 95% of validation images accepted)",
    )
    _need(e.ood_images >= 4, "evaluate.ood_images", "must be at least 4 images per family")


def _check_monitor(mo: MonitorParams) -> None:
    _need(mo.window_days >= 1, "monitor.window_days", "must be at least 1 day")
    _need(mo.min_answers >= 10, "monitor.min_answers", "must be at least 10 answers")
    _need(0 < mo.alpha < 0.5, "monitor.alpha", "must be within (0, 0.5) (0.01: 1% false alarms)")
    _need(mo.max_psi > 0, "monitor.max_psi", "must be positive (0.25: a shifted mix)")
    _need(0 < mo.max_ood_rate <= 1, "monitor.max_ood_rate", "must be within (0, 1]")


def _check_promote(pm: PromoteParams, select: SelectParams) -> None:
    _need(0 <= pm.min_macro_f1 <= 1, "promote.min_macro_f1", "must be within [0, 1]")
    _need(
        0 <= pm.min_malignant_sensitivity <= 1,
        "promote.min_malignant_sensitivity",
        "must be within [0, 1]",
    )
    _need(0 <= pm.min_coverage <= 1, "promote.min_coverage", "must be within [0, 1]")
    _need(pm.min_test_images >= 1, "promote.min_test_images", "must be at least 1")
    _need(0 < pm.margin < 0.5, "promote.margin", "must be within (0, 0.5)")
    _need(pm.alias != select.alias, "promote.alias", "must differ from select.alias")


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
