"""The MLflow model registry: register a merged model, and move the `champion` alias only when earned.

Aliases, not the deprecated stages: `champion` is the version serving; a candidate that does not
beat it by `min_delta` on the gate metric gets `challenger` and the reason in its tags.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class PromotionDecision:
    """Attributes:
    promoted: the candidate became champion.
    alias: the alias the candidate now carries ("champion" or "challenger").
    reason: why, in words.
    candidate_value: the candidate's gate metric.
    champion_version, champion_value: the champion it was compared with (None for the first version).
    """

    promoted: bool
    alias: str
    reason: str
    candidate_value: float | None = None
    champion_version: str | None = None
    champion_value: float | None = None


def _client(tracking_uri: str):  # noqa: ANN202
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def register_model(tracking_uri: str, name: str, model_uri: str, run_id: str | None = None,
                   tags: Mapping[str, str] | None = None) -> str:
    """Create a new version of registered model `name` pointing at `model_uri` (a local path or s3://).

    Returns the version number as a string.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(name, description="Registered by kubetune pipelines.")
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    if "://" in model_uri:
        source = model_uri  # already in an object store: reference it, don't copy it
    else:
        # a local directory must live in a run's artifact store to be a version source (and to outlive the pod)
        if run_id is None:
            raise ValueError(f"registering the local directory {model_uri} needs an MLflow run to hold it")
        client.log_artifacts(run_id, str(Path(model_uri)), artifact_path="model")
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={k: str(v) for k, v in (tags or {}).items()})
    logger.info("registered %s version %s from %s", name, version.version, source)
    return str(version.version)


def promote(tracking_uri: str, name: str, version: str, metric: str, *, greater_is_better: bool = True,
            min_delta: float = 0.0, metrics: Mapping[str, float] | None = None, force: bool = False
            ) -> PromotionDecision:
    """Gate `version` against the current champion on `metric`.

    Args:
        metrics: the candidate's metrics (default: read from its `gate_metric_value` tag or its run).
        force: make it champion regardless (recorded in its tags).
    """
    client = _client(tracking_uri)
    value = None if force else _candidate_value(client, name, version, metric, metrics)
    champion = _current(client, name, CHAMPION)
    if force or champion is None or champion.version == str(version):
        reason = ("forced by the operator" if force else "first version: becomes champion" if champion is None
                  else "already champion")
        return _decide(client, name, version, True, reason, value, champion)
    champion_value = _tag_value(champion, metric)
    if champion_value is None:
        return _decide(client, name, version, True,
                       f"champion v{champion.version} has no recorded {metric}", value, champion)
    gain = (value - champion_value) if greater_is_better else (champion_value - value)
    better = gain > min_delta if min_delta > 0 else gain > 0
    direction = "higher" if greater_is_better else "lower"
    reason = (f"{metric} {value:.4f} vs champion v{champion.version} {champion_value:.4f} "
              f"({direction} is better, min_delta {min_delta}): "
              + ("better — promoted" if better else "not better enough — stays challenger"))
    return _decide(client, name, version, better, reason, value, champion, champion_value)


def _candidate_value(client, name: str, version: str, metric: str, metrics: Mapping[str, float] | None) -> float:  # noqa: ANN001
    if metrics is not None:
        if metric not in metrics:
            raise KeyError(f"gate metric {metric!r} not among the candidate's metrics: {', '.join(sorted(metrics))}")
        client.set_model_version_tag(name, version, "gate_metric_value", repr(float(metrics[metric])))
        client.set_model_version_tag(name, version, "gate_metric", metric)
        return float(metrics[metric])
    mv = client.get_model_version(name, version)
    tagged = _tag_value(mv, metric)
    if tagged is not None:
        return tagged
    run_metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    if metric not in run_metrics:
        raise KeyError(f"gate metric {metric!r} not found for {name} v{version}; "
                       f"its run has: {', '.join(sorted(run_metrics)) or 'no metrics'}")
    return float(run_metrics[metric])


def _tag_value(version, metric: str) -> float | None:  # noqa: ANN001
    tags = version.tags or {}
    if tags.get("gate_metric", metric) != metric or "gate_metric_value" not in tags:
        return None
    return float(tags["gate_metric_value"])


def _current(client, name: str, alias: str):  # noqa: ANN001, ANN202
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _decide(client, name: str, version: str, promoted: bool, reason: str, value: float | None,  # noqa: ANN001
            champion, champion_value: float | None = None) -> PromotionDecision:  # noqa: ANN001
    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, version, "promotion_decision", alias)
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    logger.info("%s v%s → %s: %s", name, version, alias, reason)
    return PromotionDecision(promoted, alias, reason, value, champion.version if champion else None, champion_value)
