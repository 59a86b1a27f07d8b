"""The worst errors of the served answers, one per group: what the model card shows as its failure
cases.

Why by group: a duplicate group (or a patient) is one case; listing three copies of one missed
lesion would hide the next case. Why this order: a malignant image the referral flag misses is
the error that harms (a delayed diagnosis), so those come first, the most confidently missed (the
lowest p(malignant)) on top; then a refused scan (no answer at all for an image in scope); then
the most confident wrong class answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.intervals import group_codes
from pipeline.serving.rule import Served

KINDS = ("missed malignant", "refused as out of scope", "wrong class")


def worst_errors(
    y: np.ndarray,
    served: Served,
    classes: tuple[str, ...],
    positive: int,
    images: list[str] | tuple[str, ...],
    groups: Any = None,
    *,
    limit: int = 5,
) -> list[dict[str, Any]]:
    """Up to `limit` failure cases, the worst image of each group, worst first (module doc).

    `images`: an id per image (evaluate passes the first 12 hex digits of its sha256, which the
    manifest resolves: no file name goes into a committed card). Each case: image, group size,
    true class, the answer (a class or "out of scope"), its probability, p(malignant), the
    referral flag and the kind of error.
    """
    y = np.asarray(y)
    p = served.probabilities
    missed = (y == positive) & ~served.refer
    refused = served.refused & ~missed
    wrong = served.answered & (served.labels != y) & ~missed
    answer_p = p[np.arange(len(y)), served.labels]
    # one sort key: the kind first, then how confident the mistake was
    kind = np.select([missed, refused, wrong], [0, 1, 2], default=3)
    badness = np.select([missed, refused, wrong], [-p[:, positive], 0.0, answer_p], default=0.0)
    order = np.lexsort((-badness, kind))
    codes = group_codes(groups, len(y))
    sizes = np.bincount(codes)
    cases: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i in order:
        if kind[i] == 3 or len(cases) == limit:
            break
        if codes[i] in seen:
            continue
        seen.add(codes[i])
        cases.append(
            {
                "image": images[i],
                "group_images": int(sizes[codes[i]]),
                "true": classes[y[i]],
                "answer": "out of scope" if served.refused[i] else classes[served.labels[i]],
                "p_answer": None if served.refused[i] else float(answer_p[i]),
                "p_malignant": float(p[i, positive]),
                "refer": None if served.refused[i] else bool(served.refer[i]),
                "kind": KINDS[kind[i]],
            }
        )
    return cases
