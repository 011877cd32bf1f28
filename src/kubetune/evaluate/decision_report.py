"""The promote step's report: the decision with every gate and its numbers, rendered as the evaluate step's report
is (`kubetune.evaluate.report`), for the KFP UI (an HTML artifact) and the registered version's MLflow run.

The evaluate step's report cannot hold the decision: promotion happens two steps later, against the registry as it
is then. This one shows the decision and its reason (the registry's comparison with the champion, then each gate),
every gate with whether it held and its numbers, and the metrics the gates read, candidate beside baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubetune.config.pipeline import PipelineConfig
from kubetune.evaluate.gates import BASELINE
from kubetune.evaluate.report import Gate, ReportData, write_report

logger = logging.getLogger(__name__)

REPORT_NAME = "promotion.html"
ARTIFACT_PATH = "promotion"  # the folder of the version's MLflow run holding one report per promoted version


def decision_report(cfg: PipelineConfig, decision: Mapping[str, Any], metrics: Mapping[str, float]) -> ReportData:
    """What the report shows for `decision` (`tracking.pipeline_tracking.promote_version`'s result).

    Args:
        cfg: the pipeline config (its name, registered model and promotion gates).
        decision: `{promoted, alias, reason, version, gates: [{name, passed, detail}]}`.
        metrics: the evaluate step's metrics the gates were checked over.
    """
    version = decision["version"]
    gates = [Gate(str(g["name"]), bool(g["passed"]), str(g["detail"])) for g in decision.get("gates") or []]
    verdict = "promoted to champion" if decision["promoted"] else f"kept as {decision['alias']}"
    return ReportData(
        title=f"Promotion — {cfg.promotion.registered_model} v{version}", candidate=f"candidate v{version}",
        baseline="baseline (scored in the evaluate step)", decision=f"v{version} {verdict}: {decision['reason']}",
        gates=gates, metrics=_gate_metrics(cfg, metrics))


def _gate_metrics(cfg: PipelineConfig, metrics: Mapping[str, float]) -> dict[str, tuple[float | None, float | None]]:
    """The numbers the configured gates read: the gate metric, each no_regression metric, the judge's win rate
    and the reward gap (with their intervals) when measured; candidate beside baseline."""
    p = cfg.promotion
    names = [p.metric, *p.no_regression]
    names += [n for n in ("judge/win_rate", "judge/win_rate_ci_low", "judge/win_rate_ci_high", "reward/delta",
                          "reward/delta_ci_low", "reward/delta_ci_high") if n in metrics]
    return {name: (metrics.get(name), metrics.get(BASELINE + name)) for name in dict.fromkeys(names)}


def publish_decision(cfg: PipelineConfig, decision: Mapping[str, Any], metrics: Mapping[str, float],
                     html_path: str | Path, tracking_uri: str | None) -> Path:
    """Write the report to `html_path` (the step's KFP HTML artifact) and log it to the version's MLflow run.

    The decision is made and the aliases moved before this runs, so an MLflow that does not take the file is
    logged as a warning, never raised: the report is still in KFP.

    Returns:
        `Path`: the written report.
    """
    path = write_report(decision_report(cfg, decision, metrics), html_path)
    if tracking_uri:
        from kubetune.tracking.registry_report import log_to_version_run

        try:
            log_to_version_run(tracking_uri, cfg.promotion.registered_model, str(decision["version"]), path,
                               f"{ARTIFACT_PATH}/v{decision['version']}", filename=REPORT_NAME)
        except Exception as err:  # noqa: BLE001 — MlflowException, connection errors: the report stays in KFP
            logger.warning("promote: the decision report was not logged to MLflow at %s (%s: %s); it is in the "
                           "step's HTML artifact", tracking_uri, type(err).__name__, str(err).splitlines()[0][:300])
    return path
