"""The out-of-scope score before and after class scales: AUROC per OOD family, refusals per class.

Run in a repository whose models are trained (`dvc repro train@densenet121 train@resnet50`, or after
`make demo`): for each model it computes the pooled features of the train split (with mirrors
when augment.flip is on, as evaluate does), of validation, test and each synthetic OOD family
(pipeline.ood_sets), then scores them with

- plain: the squared Mahalanobis distance to the nearest class mean, one threshold (before);
- class-fair: each class's distance divided by its median on validation (pipeline.serving.ood,
  `with_class_scales`, what evaluate fits now);

the threshold accepting `evaluate.ood_accept` of validation, and prints the AUROC of test vs each
family and the refused n/N per class on validation and test.

Run: .venv/bin/python bench/ood_fairness.py [--params params.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import cam, ood_sets  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.datasets import load_set  # noqa: E402
from pipeline.evaluate import predict  # noqa: E402
from pipeline.paths import PREPARED as PREPARED_DIR  # noqa: E402
from pipeline.serving import ood  # noqa: E402


def pooled_features(arch: str, params) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pooled features and labels of train (+ mirrors), val, test and every OOD family."""
    model = keras.saving.load_model(f"models/{arch}/model.keras", compile=False)
    net = cam.feature_model(model)
    sets = {s: load_set(PREPARED_DIR, params.classes, split=s) for s in ("train", "val", "test")}
    images = {s: sets[s].images for s in sets}
    labels = {s: sets[s].labels for s in sets}
    if params.augment.flip:
        images["train"] = np.concatenate([images["train"], images["train"][:, :, ::-1]])
        labels["train"] = np.concatenate([labels["train"], labels["train"]])
    size = images["test"].shape[1]
    images |= ood_sets.ood_sets(params.evaluate.ood_images, size, params.seed)
    return {name: ood.pool(predict(net, x)[0]) for name, x in images.items()}, labels


def report(name: str, stats: ood.OodStatistics, pooled, labels, classes, accept: float) -> None:
    """One line per family's AUROC, one per split's refusals by class."""
    threshold = ood.accept_threshold(stats.scores(pooled["val"]), accept)
    test = stats.scores(pooled["test"])
    aurocs = []
    for family in ood_sets.FAMILIES:
        outside = stats.scores(pooled[family])
        truth = np.r_[np.zeros(len(test)), np.ones(len(outside))]
        aurocs.append(f"{family} {roc_auc_score(truth, np.r_[test, outside]):.3f}")
    print(f"  {name}: AUROC test vs " + ", ".join(aurocs))
    for split in ("val", "test"):
        refused = stats.scores(pooled[split]) > threshold
        y = labels[split]
        cells = [f"{c} {int(refused[y == k].sum())}/{int((y == k).sum())}"
                 for k, c in enumerate(classes)]  # fmt: skip
        print(f"    refused on {split}: " + ", ".join(cells))


def main() -> None:
    """Both scores for every trained model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(Path(args.params))
    accept = params.evaluate.ood_accept
    for arch in params.train.backbones:
        pooled, labels = pooled_features(arch, params)
        plain = ood.fit(pooled["train"], labels["train"])
        fair = plain.with_class_scales(pooled["val"], labels["val"])
        print(f"{arch} (accept {accept:.0%} of validation)")
        report("plain", plain, pooled, labels, params.classes, accept)
        report("class-fair", fair, pooled, labels, params.classes, accept)


if __name__ == "__main__":
    main()
