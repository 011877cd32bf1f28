"""Reading the registry: which version an alias names, and a version's recorded gate value.

Shared by `registry` (register and promote) and `champion_claims` (racing promotions), which both read
the champion and its value the same way.
"""

from __future__ import annotations

from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC_TAG = "gate_metric"
GATE_VALUE_TAG = "gate_metric_value"

__all__ = ["BASELINE_RUN", "CHALLENGER", "CHAMPION", "GATE_METRIC_TAG", "GATE_VALUE_TAG", "alias_version",
           "recorded_value", "registry_client"]


def alias_version(client_or_uri: Any, name: str, alias: str) -> str | None:
    """The version an alias points at, or `None` when the alias (or the registered model) is not there.

    Read from the registered model's alias map: asking for a missing alias directly returns the same error
    code as a bad request, and an unreachable server must not look like "no champion yet".

    Args:
        client_or_uri (`MlflowClient` or `str`):
            A client, or a tracking URI to make one.
        name (`str`):
            Registered model name.
        alias (`str`):
            E.g. `"champion"`.

    Returns:
        `str` or `None`: the version number.
    """
    from mlflow.exceptions import MlflowException

    client = registry_client(client_or_uri) if isinstance(client_or_uri, str) else client_or_uri
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    found = aliases.get(alias)
    return str(found) if found is not None else None


BASELINE_RUN = "evaluate-base"  # the pipeline step scoring the base model, nested like the version's own steps


def recorded_value(client: Any, model_version: Any, metric: str) -> tuple[float | None, set[str]]:
    """A version's value of `metric`: its tag, else its run's metrics, else its run's nested runs' (newest first).

    Returns:
        `(value or None, the metric names that were available)`.
    """
    tags = model_version.tags or {}
    if tags.get(GATE_METRIC_TAG) == metric and GATE_VALUE_TAG in tags:
        return float(tags[GATE_VALUE_TAG]), {metric}
    if not model_version.run_id:
        return None, {tags[GATE_METRIC_TAG]} if GATE_METRIC_TAG in tags else set()
    run = client.get_run(model_version.run_id)
    available = set(run.data.metrics)
    if metric in run.data.metrics:
        return float(run.data.metrics[metric]), available
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                                  order_by=["attributes.start_time DESC"])
    for child in children:
        if child.data.tags.get("mlflow.runName") == BASELINE_RUN:
            continue  # the base model's scores (evaluate-base), not this version's
        available |= set(child.data.metrics)
        if metric in child.data.metrics:
            return float(child.data.metrics[metric]), available
    return None, available


def registry_client(tracking_uri: str) -> Any:
    """An `MlflowClient` whose tracking and registry URI are both `tracking_uri`."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
