"""Values of the right type but out of range, or at odds with each other, stop the run with one
line naming the key (pipeline.param_checks)."""

import pytest

from pipeline.errors import UserError
from tests.factories import project_params


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"promote": {"margin": 0}}, "promote.margin: must be within"),
        ({"evaluate": {"prevalence": 1.0}}, "evaluate.prevalence: must be within"),
        ({"evaluate": {"threshold_confidence": 0.3}}, "evaluate.threshold_confidence: must be"),
        ({"evaluate": {"temperature_min_improvement": -1}}, "evaluate.temperature_min_improvement"),
        ({"evaluate": {"temperature_range": [0.0, 5]}}, "evaluate.temperature_range: must be"),
        ({"evaluate": {"temperature_range": [1.5, 5]}}, "evaluate.temperature_range: must be"),
        ({"evaluate": {"temperature_range": [0.5]}}, "evaluate.temperature_range: must be"),
        ({"train": {"batch_size": 0}}, "train.batch_size: must be positive"),
        ({"prepare": {"val_fraction": 0.4, "test_fraction": 0.45}}, "prepare.test_fraction"),
        ({"classes": ["benign"]}, "classes: need at least two"),
        ({"augment": {"target_per_class": -1}}, "augment.target_per_class"),
        ({"seed": -1}, "seed: must be within"),
        ({"positive_class": "cancer"}, "positive_class: must be one of classes"),
    ],
)
def test_bad_values_name_their_key(raw, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("[", r"\[")):
        project_params(raw)
