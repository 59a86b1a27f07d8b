"""Validate Azure ML YAML files offline with azure-ai-ml's own loaders; print one JSON summary.

Run with the azure-ai-ml environment (`make azure-ml-env`): `.venv-azure-ai-ml/bin/python
deploy/azure/validate.py build/azure`. Exit 1 with the loader's message when a file is invalid.
"""

import json
import sys
from pathlib import Path

from azure.ai.ml import load_online_deployment, load_online_endpoint


def main(folder: str) -> int:
    """Load endpoint.yml and deployment.yml with azure-ai-ml's own loaders, offline; 1 when
    invalid."""
    root = Path(folder)
    try:
        endpoint = load_online_endpoint(source=root / "endpoint.yml")
        deployment = load_online_deployment(source=root / "deployment.yml")
    except Exception as exc:  # the loaders raise several types; any of them means "invalid"
        print(f"invalid: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    summary = {
        "endpoint": {"name": endpoint.name, "auth_mode": endpoint.auth_mode},
        "deployment": {
            "name": deployment.name,
            "endpoint_name": deployment.endpoint_name,
            "instance_type": deployment.instance_type,
            "instance_count": deployment.instance_count,
            "request_timeout_ms": deployment.request_settings.request_timeout_ms,
            "max_concurrent_requests_per_instance": (
                deployment.request_settings.max_concurrent_requests_per_instance
            ),
            "liveness_period": deployment.liveness_probe.period,
            "readiness_period": deployment.readiness_probe.period,
            "scoring_script": deployment.code_configuration.scoring_script,
            "code": str(deployment.code_configuration.code),
            "model_path": str(deployment.model.path),
            "conda_file": deployment.environment.conda_file,
            "environment_variables": deployment.environment_variables,
            "data_collector": data_collector(deployment.data_collector),
        },
    }
    print(json.dumps(summary, default=str))
    return 0


def data_collector(collector) -> dict | None:
    """The loaded data_collector section: each collection's `enabled` ('true'/'false' after
    azure-ai-ml's schema), the rolling and sampling rates; None when the deployment has none."""
    if collector is None:
        return None
    return {
        "collections": {name: c.enabled for name, c in collector.collections.items()},
        "rolling_rate": collector.rolling_rate,
        "sampling_rate": collector.sampling_rate,
    }


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy/azure"))
