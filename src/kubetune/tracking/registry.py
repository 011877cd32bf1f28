"""The MLflow model registry: register a merged model with its lineage, and move `champion` only when earned.

Aliases, not MLflow's deprecated stages: `champion` names the version that serves. A new version is
compared with it on one gate metric (`promotion.metric` in a pipeline config); it takes `champion` only
if it is better by more than `min_delta`, else it gets `challenger`. Either way the version's tags say
what was decided and why (`promotion_decision`, `promotion_reason`), and the gate value it was judged
on (`gate_metric`, `gate_metric_value`), so the next comparison, and a person, can read it back.

Under faults: a model whose export did not finish (no `_SUCCESS` marker, `kubetune.export_marker`) is
never registered nor promoted; registering the same export again for the same runs (a retried step)
returns the version made the first time; two promotions racing for `champion` leave the better one
there (`kubetune.tracking.champion_claims` says how, and what that does not guarantee).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubetune
from kubetune.export_marker import IncompleteExportError, require_complete
from kubetune.tracking.champion_claims import reconcile, write_claim
from kubetune.tracking.connection import http_limits
from kubetune.tracking.registry_reads import (
    BASELINE_RUN,
    CHALLENGER,
    CHAMPION,
    GATE_METRIC_TAG,
    GATE_VALUE_TAG,
    alias_version,
    recorded_value,
    registry_client,
)

logger = logging.getLogger(__name__)

LINEAGE_TAGS = ("kfp_run_id", "data_hash", "config_hash", "base_model", "stage", "kubetune_version")
REGISTRATION_KEY_TAG = "registration_key"  # what makes a retried registration the same one (see register_model)
EXPORT_COMPLETE_TAG = "export_complete"  # "true": register checked the export's marker
_UPLOAD_TAG_PREFIX = "kubetune.registration_upload."  # run tag: where that registration uploads its files
_CAS_ATTEMPTS = 5  # promote re-judges when the champion moved under it; more moves than this is an error
# Registry calls may fail outright (there is nothing to buffer), but a wrong URI must fail in seconds,
# not after MLflow's default 7 retries; 2 retries still ride out a restarting server.
_TIMEOUT_S = 30.0
_RETRIES = 2
_UPLOAD_TIMEOUT_S = 600.0  # a merged model's shard of gigabytes, proxied through the server to its store

__all__ = [
    "BASELINE_RUN",
    "CHALLENGER",
    "CHAMPION",
    "GateMetricMissing",
    "IncompleteExportError",
    "PromotionDecision",
    "alias_version",
    "decide",
    "promote",
    "recorded_value",
    "register_model",
]


class GateMetricMissing(KeyError):
    """The gate metric has no value for a version; the message names the metrics that do exist."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class PromotionDecision:
    """What `promote` decided.

    Attributes:
        promoted (`bool`): the candidate holds `champion` now.
        alias (`str`): the alias the candidate now holds, `"champion"` or `"challenger"`.
        reason (`str`): why, in words (also in the version's `promotion_reason` tag).
        candidate_value (`float` or `None`): the candidate's gate metric (`None` only when forced without one).
        champion_version (`str` or `None`): the champion it was compared with; `None` for the first version.
        champion_value (`float` or `None`): that champion's gate metric, if it has one.
        version (`str`): the candidate version.
        metric (`str`): the gate metric's name.
    """

    promoted: bool
    alias: str
    reason: str
    candidate_value: float | None = None
    champion_version: str | None = None
    champion_value: float | None = None
    version: str = ""
    metric: str = ""


# --- register --------------------------------------------------------------------------------------


def register_model(
    tracking_uri: str,
    name: str,
    model_dir_or_uri: str | os.PathLike[str],
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    *,
    artifact_path: str = "model",
) -> str:
    """Create a version of registered model `name` (and the registered model, if it is new), once.

    The export must have finished: a local folder needs the `_SUCCESS` marker `kubetune export` writes
    last (with every file it lists), an `s3://` prefix the `_SUCCESS` object `upload_dir` writes last.

    A URI with a scheme (`s3://bucket/models/x`, `runs:/...`, `mlflow-artifacts:/...`) is referenced as the
    version's source, not copied. A local folder is first uploaded as artifacts of `run_id` (a version's source
    must outlive the pod that wrote it, and an MLflow server refuses local paths outside a run's artifacts).
    No MLflow flavour is needed: the version points at plain files (safetensors, config, tokenizer).

    Idempotent: the version carries a `registration_key` tag, a hash of the model name, `run_id`, the KFP run
    id and the export (its marker's export id, or its URI and marker time). Registering the same export for
    the same runs again — a retried register step — returns the version made the first time, uploading
    nothing; a retry after an upload was killed re-uploads into the same artifact folder. Should a version be
    created twice all the same (a create whose answer was lost and that was sent again), the later duplicates
    are deleted and the lowest version is returned, by every caller alike.

    Args:
        tracking_uri (`str`):
            The MLflow server or store (also used as the registry).
        name (`str`):
            Registered model name.
        model_dir_or_uri (`str` or `os.PathLike`):
            The merged model: a local folder or a URI.
        run_id (`str`, *optional*):
            The run the version comes from (the pipeline's parent run); required for a local folder.
        tags (`Mapping[str, Any]`, *optional*):
            Version tags; the lineage tags `kfp_run_id`, `data_hash`, `config_hash`, `base_model`, `stage` are
            expected here. `kubetune_version` and `kfp_run_id` (from `KFP_RUN_ID`) are filled in when missing.
        artifact_path (`str`, *optional*, defaults to `"model"`):
            Where a local folder goes in the run's artifacts; `model-2`, `model-3`, ... if already taken there,
            so an earlier version's files are never overwritten.

    Returns:
        `str`: the version number.

    Raises:
        IncompleteExportError: the export has no completion marker, or its files no longer match it.
        FileNotFoundError: `model_dir_or_uri` is a local path that does not exist.
        ValueError: a local folder without a `run_id` to hold it.
    """
    model = str(model_dir_or_uri)
    stamp = require_complete(model)  # before anything is created: a half-written model never gets a version
    lineage = _lineage(tags or {})
    key = _registration_key(name, model, stamp, run_id, lineage.get("kfp_run_id", ""))
    client = registry_client(tracking_uri)
    with http_limits(_TIMEOUT_S, _RETRIES):
        existing = _versions_with_key(client, name, key)
        if existing:
            version = _keep_first(client, name, existing)
            logger.info("%s version %s is this export already (a retried register step): not registering again",
                        name, version)
            return version
        _ensure_registered_model(client, name)
    with http_limits(_UPLOAD_TIMEOUT_S, _RETRIES):
        source = _version_source(client, model, run_id, artifact_path, key)
    with http_limits(_TIMEOUT_S, _RETRIES):
        lineage.update({REGISTRATION_KEY_TAG: key, EXPORT_COMPLETE_TAG: "true"})
        created = client.create_model_version(name, source=source, run_id=run_id, tags=lineage)
        version = _keep_first(client, name, _versions_with_key(client, name, key) or [created])
    logger.info("Registered %s version %s from %s", name, version, source)
    return version


def _registration_key(name: str, model: str, stamp: str, run_id: str | None, kfp_run_id: str) -> str:
    """The same export, registered under the same name for the same runs, has the same key."""
    local = "://" not in model and not model.startswith(("runs:/", "models:/", "mlflow-artifacts:/"))
    if local and stamp:
        export = f"export:{stamp}"  # the marker's id: the same export wherever its folder is mounted
    elif local:
        path = Path(model).resolve()
        export = f"file:{path}:{path.stat().st_size}"
    else:
        export = f"uri:{model.rstrip('/')}@{stamp}"
    text = json.dumps([name, run_id or "", kfp_run_id, export])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _versions_with_key(client: Any, name: str, key: str) -> list[Any]:
    return list(client.search_model_versions(f"name = '{name}' and tags.{REGISTRATION_KEY_TAG} = '{key}'"))


def _keep_first(client: Any, name: str, versions: list[Any]) -> str:
    """The lowest of the versions made for one registration; the others (duplicates) are deleted."""
    from mlflow.exceptions import MlflowException

    first, *duplicates = sorted(versions, key=lambda mv: int(mv.version))
    for duplicate in duplicates:
        logger.warning("%s version %s duplicates version %s (a registration sent twice): deleting it",
                       name, duplicate.version, first.version)
        try:
            client.delete_model_version(name, duplicate.version)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # a racing caller deleted it first
                raise
    return str(first.version)


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="Registered by kubetune pipelines.")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _version_source(client: Any, model: str, run_id: str | None, artifact_path: str, key: str) -> str:
    if "://" in model or model.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return model  # already in a store: reference it, don't copy gigabytes
    local = Path(model)
    if run_id is None:
        raise ValueError(f"registering the local folder {model} needs an MLflow run to upload it to: pass run_id "
                         "(the pipeline's parent run), or upload it first and pass its s3:// URI")
    path = _upload_path(client, run_id, artifact_path, key)
    if local.is_dir():
        client.log_artifacts(run_id, str(local), path)
    else:
        client.log_artifact(run_id, str(local), path)
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"


def _upload_path(client: Any, run_id: str, wanted: str, key: str) -> str:
    """The artifact folder for this registration: the one an earlier, killed attempt reserved, else a free one.

    Reserved in a run tag before the first byte goes up, so a retry overwrites its own half-upload rather than
    leaving it behind and uploading a second copy.
    """
    tag = _UPLOAD_TAG_PREFIX + key[:16]
    reserved = client.get_run(run_id).data.tags.get(tag)
    if reserved:
        return reserved
    taken = {item.path for item in client.list_artifacts(run_id)}
    taken |= {v for k, v in client.get_run(run_id).data.tags.items() if k.startswith(_UPLOAD_TAG_PREFIX)}
    candidate, n = wanted, 1
    while candidate in taken:
        n += 1
        candidate = f"{wanted}-{n}"
    client.set_tag(run_id, tag, candidate)
    return candidate


def _lineage(tags: Mapping[str, Any]) -> dict[str, str]:
    lineage = {k: str(v) for k, v in tags.items() if v is not None}
    lineage.setdefault("kubetune_version", kubetune.__version__)
    if os.environ.get("KFP_RUN_ID"):
        lineage.setdefault("kfp_run_id", os.environ["KFP_RUN_ID"])
    return lineage


# --- promote ---------------------------------------------------------------------------------------


def promote(
    tracking_uri: str,
    name: str,
    version: str | int,
    metric: str,
    greater_is_better: bool = True,
    min_delta: float = 0.0,
    metrics: Mapping[str, float] | None = None,
    *,
    force: bool = False,
    gates: Sequence[Any] | None = None,
) -> PromotionDecision:
    """Gate `version` of `name` against the current `champion` on `metric`, and move the aliases accordingly.

    The candidate's value comes from `metrics` when given; else from the version's `gate_metric_value` tag
    (when its `gate_metric` tag is `metric`); else from the metrics of the version's run, or of that run's
    nested runs (the pipeline's `evaluate` step), the most recent first. The champion's value is found the
    same way. The candidate becomes `champion` when there is none yet, when it beats the champion by more
    than `min_delta`, when the champion has no value to compare, or when `force` is set; otherwise it becomes
    `challenger`. The decision and its reason are written to the version's tags either way.

    Racing promotions (two pipelines finishing at once): the champion is re-read right before the alias is
    written and the candidate judged again if it moved; a candidate that earned `champion` claims it in its
    tags first, and after writing the alias every promoter reconciles, so the better racer ends as champion
    and the other as `challenger` (`kubetune.tracking.champion_claims` gives the argument and its limits).
    A version whose export did not finish is refused (register tagged it `export_complete`; a version
    registered otherwise has its local or `s3://` source checked for the marker).

    Args:
        tracking_uri (`str`):
            The MLflow server or store.
        name (`str`):
            Registered model name.
        version (`str` or `int`):
            The candidate version.
        metric (`str`):
            The gate metric, e.g. `"predict_rouge-l"` or `"eval_loss"`.
        greater_is_better (`bool`, *optional*, defaults to `True`):
            `False` for losses and perplexities.
        min_delta (`float`, *optional*, defaults to `0.0`):
            The improvement must exceed this (in the metric's units; an equal value never promotes).
        metrics (`Mapping[str, float]`, *optional*):
            The candidate's metrics, e.g. the evaluate step's output; `None` reads them from MLflow.
        force (`bool`, *optional*, defaults to `False`):
            Make the candidate champion whatever the metrics say (tagged `promotion_forced=true`); a missing
            metric is then no error.
        gates (sequence, *optional*):
            The evaluate step's gates over the candidate and its baseline measured together
            (`kubetune.evaluate.gates.check_gates`: items with `name`, `passed`, `detail`). Every one must hold
            as well; the reason (the `promotion_reason` tag) names each with its numbers.

    Returns:
        `PromotionDecision`: what was decided and why.

    Raises:
        GateMetricMissing: the candidate has no value for `metric`; the message lists the metrics it has.
        IncompleteExportError: the candidate's source has no export completion marker.
        ValueError: a negative `min_delta`.
        RuntimeError: the champion kept moving (more than a few promotions at once, or a foreign writer).
    """
    if min_delta < 0:
        raise ValueError(f"min_delta must be >= 0 (an improvement threshold), got {min_delta}")
    version = str(version)
    client = registry_client(tracking_uri)
    with http_limits(_TIMEOUT_S, _RETRIES):
        candidate = client.get_model_version(name, version)
        _require_complete_version(candidate)
        value = _candidate_value(client, candidate, metric, metrics, required=not force)
        decision = _decide_and_set(client, name, version, value, metric, greater_is_better, min_delta, force,
                                   gates)
        if decision.promoted:
            decision = _after_race(client, name, decision, greater_is_better)
    logger.info("%s v%s -> %s: %s", name, version, decision.alias, decision.reason)
    return decision


def _decide_and_set(client: Any, name: str, version: str, value: float | None, metric: str,
                    greater_is_better: bool, min_delta: float, force: bool,
                    gates: Sequence[Any] | None = None) -> PromotionDecision:
    """Judge against the champion read now; write only if a re-read just before shows the same champion."""
    seen = _champion_state(client, name, version, metric)
    for _ in range(_CAS_ATTEMPTS):
        champion, rival, rival_value = seen
        promoted, reason = _judge(version, value, champion, rival_value, metric, greater_is_better, min_delta, force)
        if gates and not force:
            promoted, reason = _with_gates(promoted, reason, gates)
        now = _champion_state(client, name, version, metric)  # compare ...
        if repr(now) != repr(seen):  # repr: a NaN gate value equals itself
            logger.info("%s: champion moved from v%s to v%s while v%s was judged: judging again", name,
                        champion, now[0], version)
            seen = now
            continue
        decision = PromotionDecision(
            promoted=promoted, alias=CHAMPION if promoted else CHALLENGER, reason=reason, candidate_value=value,
            champion_version=rival, champion_value=rival_value, version=version, metric=metric,
        )
        if promoted and champion != version:
            write_claim(client, name, version, metric, greater_is_better, forced=force)  # before the alias moves
        _apply(client, name, decision, force)  # ... and set
        return decision
    raise RuntimeError(f"{name}: the champion alias moved {_CAS_ATTEMPTS} times while v{version} was judged; "
                       f"too many promotions at once. Promote v{version} again.")


def _champion_state(client: Any, name: str, version: str, metric: str) -> tuple[str | None, str | None,
                                                                                  float | None]:
    """(champion version, the rival the candidate is compared with, that rival's gate value)."""
    champion = alias_version(client, name, CHAMPION)
    rival = champion if champion != version else None
    rival_value = recorded_value(client, client.get_model_version(name, rival), metric)[0] if rival else None
    return champion, rival, rival_value


def _after_race(client: Any, name: str, decision: PromotionDecision, greater_is_better: bool) -> PromotionDecision:
    """Reconcile after setting `champion` (verify); a candidate a better racer displaced becomes `challenger`."""
    version = decision.version
    winner = reconcile(client, name, decision.metric, greater_is_better)
    if winner == version:
        return decision
    winner_value = recorded_value(client, client.get_model_version(name, winner), decision.metric)[0]
    reason = (f"{decision.reason}; but v{winner} ({decision.metric} = {_fmt(winner_value)}) claimed champion "
              "at the same time and is better: stays challenger")
    lost = PromotionDecision(promoted=False, alias=CHALLENGER, reason=reason, candidate_value=decision.candidate_value,
                             champion_version=winner, champion_value=winner_value, version=version,
                             metric=decision.metric)
    client.set_registered_model_alias(name, CHALLENGER, version)
    for key, value in {"promotion_decision": CHALLENGER, "promotion_reason": reason,
                       "promotion_compared_with": winner}.items():
        client.set_model_version_tag(name, version, key, value)
    return lost


def _require_complete_version(candidate: Any) -> None:
    """Promote only a version whose export finished: register checked it (tag), else check its source now."""
    if (candidate.tags or {}).get(EXPORT_COMPLETE_TAG) == "true":
        return
    source = str(candidate.source or "")
    if source.startswith("s3://") or (source and "://" not in source and ":/" not in source):
        try:
            require_complete(source)
        except IncompleteExportError as err:
            raise IncompleteExportError(f"refusing to promote {candidate.name} v{candidate.version}: {err}") from err
        return
    logger.warning("%s v%s was not registered by kubetune (no %s tag) and its source %s cannot be checked for an "
                   "export marker: promoting it as it is", candidate.name, candidate.version, EXPORT_COMPLETE_TAG,
                   source)


def decide(candidate: float, champion: float, greater_is_better: bool = True, min_delta: float = 0.0) -> bool:
    """Whether `candidate` beats `champion` by more than `min_delta` (NaN never beats anything).

    Args:
        candidate (`float`):
            The new version's gate value.
        champion (`float`):
            The champion's gate value.
        greater_is_better (`bool`, *optional*, defaults to `True`):
            The metric's direction.
        min_delta (`float`, *optional*, defaults to `0.0`):
            The margin the improvement must exceed.

    Returns:
        `bool`: `True` to promote.
    """
    gain = candidate - champion if greater_is_better else champion - candidate
    return gain > min_delta  # False for NaN


def _judge(version: str, value: float | None, champion_version: str | None, champion_value: float | None,
           metric: str, greater_is_better: bool, min_delta: float, force: bool) -> tuple[bool, str]:
    """(promote?, the reason in words)."""
    measured = f"{metric} = {_fmt(value)}"
    if force:
        versus = f"; champion v{champion_version} has {_fmt(champion_value)}" if champion_version else ""
        return True, f"forced by the operator ({measured}{versus})"
    if champion_version is None:
        return True, f"first version: no champion yet, becomes champion ({measured})"
    if champion_version == version:
        return True, f"already champion ({measured})"
    if champion_value is None:
        return True, f"champion v{champion_version} has no recorded {metric}, nothing to beat ({measured})"
    if value is None:  # unreachable: _candidate_value requires a value unless forced
        raise GateMetricMissing(f"no value of {metric} for v{version}")
    better = decide(value, champion_value, greater_is_better, min_delta)
    direction = "higher" if greater_is_better else "lower"
    comparison = (f"{measured} vs champion v{champion_version} {_fmt(champion_value)} ({direction} is better, "
                  f"min_delta {min_delta:g})")
    if better:
        return True, f"{comparison}: better, promoted"
    if math.isnan(value):
        return False, f"{comparison}: the candidate's value is NaN, stays challenger"
    return False, f"{comparison}: not better enough, stays challenger"


def _with_gates(promoted: bool, reason: str, gates: Sequence[Any]) -> tuple[bool, str]:
    """The registry's judgement and the evaluate step's gates together: promoted only if all hold."""
    failed = [g for g in gates if not g.passed]
    listed = "; ".join(f"{g.name}: {'held' if g.passed else 'FAILED'} ({g.detail})" for g in gates)
    if failed:
        return False, f"gates — {listed}; stays challenger ({len(failed)} of {len(gates)} failed). Registry: {reason}"
    return promoted, f"{reason}; gates — {listed}"


def _apply(client: Any, name: str, decision: PromotionDecision, force: bool) -> None:
    """Move the alias and record the decision in the version's tags."""
    version = decision.version
    client.set_registered_model_alias(name, decision.alias, version)
    if decision.promoted and alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)  # one version must not be both
    tags = {"promotion_decision": decision.alias, "promotion_reason": decision.reason,
            "promotion_forced": str(force).lower()}
    if decision.champion_version is not None:
        tags["promotion_compared_with"] = decision.champion_version
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promoted and decision.champion_version is not None:
        client.set_model_version_tag(name, decision.champion_version, "superseded_by", version)


# --- reading gate values ---------------------------------------------------------------------------


def _candidate_value(client: Any, candidate: Any, metric: str, metrics: Mapping[str, float] | None,
                     required: bool) -> float | None:
    """The candidate's gate value; recorded in its tags so later comparisons (and people) can read it."""
    if metrics is not None:
        value = float(metrics[metric]) if metric in metrics else None
        available = set(metrics)
    else:
        value, available = recorded_value(client, candidate, metric)
    if value is None:
        if required:
            raise GateMetricMissing(
                f"gate metric {metric!r} has no value for {candidate.name} v{candidate.version}; "
                f"available: {', '.join(sorted(available)) or 'no metrics at all'}"
            )
        return None
    client.set_model_version_tag(candidate.name, candidate.version, GATE_METRIC_TAG, metric)
    client.set_model_version_tag(candidate.name, candidate.version, GATE_VALUE_TAG, repr(value))
    return value


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"
