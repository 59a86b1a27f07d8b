"""Azure ML's data collector for the scoring script: the prediction log's row of each answer,
split into the deployment's `model_inputs` and `model_outputs` collections; never the image.

Why: on Azure the endpoint keeps no local prediction log (its disk goes with the instance);
the data collector that `deploy/azure/deployment.yml` turns on (`data_collector:`) stores what
score.py hands it in the workspace's blob storage, registered as the data assets
`<endpoint>-<deployment>-model_inputs` and `-model_outputs` that Azure ML's model monitoring
reads. What is handed over is built by `predlog.record` and holds the log's columns only, so the
log's privacy holds there too:

    model_inputs   width, height, mean, std, p05, p50, p95, colour, ood_score
    model_outputs  answer, refer, out_of_scope, probability_<class> for each class,
                   model_name, model_version, arch

Never image bytes, pixels, file names, request headers or client addresses; the deployment
keeps Azure's request/response payload logging off (the request is the image).

Best effort by design: the package (`azureml-ai-monitoring`) may be missing, the deployment may
have no data collector (`azmlinfsrv` on a laptop, an older deployment) and a collect may fail
(the collector's queue is full): each is logged once, and the request is answered all the same.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import numpy as np

from pipeline.serving.predlog import record

INPUTS = "model_inputs"  # the collection names deployment.yml enables
OUTPUTS = "model_outputs"
INPUT_COLUMNS = ("width", "height", "mean", "std", "p05", "p50", "p95", "colour", "ood_score")
OUTPUT_COLUMNS = ("answer", "refer", "out_of_scope", "model_name", "model_version", "arch")
PROBABILITY_PREFIX = "probability_"  # one column per class: tabular monitors read columns

logger = logging.getLogger(__name__)


def collected_rows(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_inputs, model_outputs) of one prediction-log row (`predlog.record`): what the
    model was shown, summarised, and what it answered, with one probability column per class.
    The log's `ts` is left out: the collector stamps each row and pairs the two by its own
    correlation id."""
    inputs = {name: row[name] for name in INPUT_COLUMNS}
    outputs = {name: row[name] for name in OUTPUT_COLUMNS}
    for cls, probability in json.loads(row["probabilities"]).items():
        outputs[PROBABILITY_PREFIX + cls] = probability
    return inputs, outputs


class DataCollection:
    """The two collectors of one scoring process, or none when data collection is unavailable.

    Built in score.py's `init()`; `collect` is called once per answer and never raises. The
    first reason for not collecting (not installed, not enabled, a failed collect) is logged as
    a warning; later failures are only counted in `failures`.
    """

    def __init__(self) -> None:
        self.failures = 0
        self._inputs: Any = None
        self._outputs: Any = None
        try:  # the scoring environments pin both; anywhere else scoring goes on without them
            import pandas
            from azureml.ai.monitoring import Collector
        except ImportError as exc:
            self._failed(exc)
            return
        try:  # the collector reads the deployment's data_collector settings here
            inputs = Collector(name=INPUTS, on_error=self._failed)
            outputs = Collector(name=OUTPUTS, on_error=self._failed)
        except Exception as exc:  # a broken collector setting must not stop the endpoint
            self._failed(exc)
            return
        if self.failures == 0:  # on_error was called if a collection is not enabled
            self._inputs, self._outputs, self._frame = inputs, outputs, pandas.DataFrame

    @property
    def active(self) -> bool:
        """Whether answers are collected (both collectors are up); when not, `collect` is free."""
        return self._inputs is not None

    def collect(
        self, result: dict[str, Any], prepared: np.ndarray, width: int, height: int
    ) -> None:
        """Hand one answer (the serving core's) for an upload of width x height pixels, whose
        model input was `prepared`, to the collectors; outputs are correlated with inputs."""
        if not self.active:
            return
        try:
            row = record(result, prepared, width, height, dt.datetime.now(dt.UTC))
            inputs, outputs = collected_rows(row)
            context = self._inputs.collect(self._frame([inputs]))
            self._outputs.collect(self._frame([outputs]), context)
        except Exception as exc:  # never fail an answer because its record could not be kept
            self._failed(exc)

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        if self.failures == 1:
            logger.warning(
                "Azure ML data collection: %s: %s (requests are answered all the same; "
                "later failures are not logged)",
                type(error).__name__,
                error,
            )
