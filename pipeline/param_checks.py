"""The ranges and relations of params.yaml that types cannot say, checked once after `config`
has built the typed Params: one function per params.yaml section, in the file's order, so the
first bad key in the file is the one reported, as one `key: message` line.

Apart from `config` so that the schema (what keys there are and their types) reads on one screen
and the limits (what values make sense, and why) on another.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import paths
from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.config import (
        AugmentParams,
        EvaluateParams,
        MonitorParams,
        Params,
        PrepareParams,
        PromoteParams,
        SelectParams,
        TrainParams,
    )


def _need(ok: bool, key: str, message: str) -> None:
    """Stop with one line naming the parameter when a check fails."""
    if not ok:
        raise UserError(f"{key}: {message}")


def check_values(p: Params) -> None:
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
