"""Pipeline-level tracking: the parent MLflow run, a nested run per step, registry and promotion.

Steps run in separate processes (pods on a cluster), so everything here works from the parent
run id string alone. The tracking URI comes from the config's `mlflow.tracking_uri`, else the
`MLFLOW_TRACKING_URI` environment variable, else a local sqlite store in the kubetune cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubetune
from kubetune.config.pipeline import PipelineConfig
from kubetune.config.schema import RunConfig
from kubetune.paths import cache_root

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from kubetune.tracking.stage_run import MLflowTracker

logger = logging.getLogger(__name__)


def tracking_uri(cfg: PipelineConfig) -> str:
    from kubetune.tracking.connection import default_tracking_uri

    return cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(
        cache_root() / "mlflow")


def open_pipeline_run(cfg: PipelineConfig, kfp_run_id: str) -> str:
    """Create (or, with MLFLOW_RUN_ID set, reuse) the parent run of this pipeline run."""
    from kubetune.tracking.parent_run import start_pipeline_run

    tags = {"kfp_run_id": kfp_run_id, "config_hash": cfg.config_hash(), "pipeline": cfg.pipeline,
            "kubetune_version": kubetune.__version__}
    return start_pipeline_run(tracking_uri(cfg), cfg.mlflow.experiment, run_name=f"{cfg.name}-{kfp_run_id[:8]}",
                              tags=tags)


# What the exit step is told when every step succeeded: kfp.local says SUCCEEDED; the KFP backend passes
# MLMD's execution state, COMPLETE (CACHED/SKIPPED steps count as done).
_SUCCEEDED = {"SUCCEEDED", "COMPLETE", "COMPLETED", "CACHED", "SKIPPED"}


def mlflow_status(pipeline_state: str) -> str:
    """The MLflow run status for KFP's final state of a pipeline's steps: FINISHED, KILLED (cancelled) or FAILED."""
    state = pipeline_state.strip().upper()
    return "FINISHED" if state in _SUCCEEDED else "KILLED" if state.startswith("CANCEL") else "FAILED"


def close_pipeline_run(cfg: PipelineConfig, kfp_run_id: str, pipeline_state: str) -> str:
    """End the parent run (and any nested run left open) with the pipeline's outcome; returns the status set.

    KFP's final states map onto MLflow's by `mlflow_status`. An unreachable server is logged, not raised:
    the exit step must not turn a trained, registered model into a failed pipeline run. Returns "" when
    there was no run to close.
    """
    from kubetune.tracking.parent_run import end_pipeline_run

    state = pipeline_state.upper()
    status = mlflow_status(state)
    uri = tracking_uri(cfg)
    try:
        parent = end_pipeline_run(uri, cfg.mlflow.experiment, kfp_run_id, status)
    except Exception as err:  # noqa: BLE001 — MlflowException, connection errors: say so and let the run end
        logger.warning("could not close the pipeline's MLflow run at %s (%s): it stays RUNNING there",
                       uri, str(err).splitlines()[0][:300])
        return ""
    if parent is None:
        logger.info("no MLflow parent run for KFP run %s (the pipeline stopped before opening one)", kfp_run_id)
        return ""
    logger.info("MLflow parent run %s closed as %s (pipeline %s)", parent, status, state)
    return status


class StageTracking:
    """What a step reports through: Trainer callbacks, final metrics, and files.

    Args:
        tracker (`MLflowTracker` or `None`):
            The step's MLflow run; `None` when tracking is off (every method then does nothing).
    """

    def __init__(self, tracker: MLflowTracker | None) -> None:
        self.tracker = tracker

    @property
    def callbacks(self) -> list[TrainerCallback]:
        """The Trainer callbacks that log into the step's run (none when tracking is off)."""
        return [self.tracker.callback()] if self.tracker is not None else []

    def log_result(self, metrics: dict[str, Any], files: dict[str, str]) -> None:
        """Log a step's final results into its run.

        Args:
            metrics (`dict[str, Any]`):
                The stage's metrics; values that are no metrics (`kubetune.tracking.metric_values`) are skipped.
            files (`dict[str, str]`):
                Name → path of the stage's reports; each existing file is uploaded as an artifact.
        """
        if self.tracker is None:
            return
        self.tracker.log_metrics(metrics)  # it keeps the values that are metrics (`metric_values`)
        for path in files.values():
            if Path(path).is_file():
                self.tracker.log_artifact(path)


@contextmanager
def stage_tracking(cfg: PipelineConfig, run_cfg: RunConfig, parent_run_id: str, stage: str) -> Iterator[StageTracking]:
    """A nested MLflow run for one step under `parent_run_id` ("" = tracking off); FAILED if the step raises."""
    if not parent_run_id:
        yield StageTracking(None)
        return
    from kubetune.tracking.stage_run import MLflowTracker

    tracker = MLflowTracker.for_stage(tracking_uri(cfg), parent_run_id, stage, cfg.mlflow.experiment,
                                      fallback_dir=run_cfg.train.output_dir)
    tracker.log_params(run_cfg.to_flat())
    with tracker:
        yield StageTracking(tracker)


def register_version(cfg: PipelineConfig, model_uri: str, metrics: dict[str, float], *, parent_run_id: str,
                     kfp_run_id: str, data_hash: str) -> str:
    from kubetune.tracking.registry import register_model

    tags = {"kfp_run_id": kfp_run_id, "data_hash": data_hash, "config_hash": cfg.config_hash(),
            "base_model": str(cfg.shared.get("model_name_or_path", "")), "stage": cfg.stages_to_run()[-1],
            "kubetune_version": kubetune.__version__}
    gate = cfg.promotion.metric
    if gate in metrics:
        tags["gate_metric"], tags["gate_metric_value"] = gate, repr(float(metrics[gate]))
    return register_model(tracking_uri(cfg), cfg.promotion.registered_model, model_uri, run_id=parent_run_id or None,
                          tags=tags)


def promote_version(cfg: PipelineConfig, version: str, metrics: dict[str, float]) -> dict[str, Any]:
    """Promote by the registry's comparison and, when the evaluate step scored a baseline beside the candidate,
    by every gate of the promotion section over those numbers (`kubetune.evaluate.gates`)."""
    from kubetune.evaluate.gates import BASELINE, GateSettings, check_gates
    from kubetune.tracking.registry import promote

    p = cfg.promotion
    gates = None
    # with a baseline scored beside the candidate, every gate; without one, the gates that need other numbers
    # still run (and fail on the missing numbers): a configured gate is never passed by default
    extra_gates = bool(p.no_regression) or p.min_judge_win_rate is not None or p.min_reward_delta is not None
    if extra_gates or any(name.startswith(BASELINE) for name in metrics):
        gates = check_gates(metrics, GateSettings(p.metric, p.greater_is_better, p.min_delta, p.no_regression,
                                                  p.min_judge_win_rate, p.min_reward_delta))
    decision = promote(tracking_uri(cfg), p.registered_model, version, p.metric,
                       greater_is_better=p.greater_is_better, min_delta=p.min_delta, metrics=metrics, gates=gates)
    return {"promoted": decision.promoted, "alias": decision.alias, "reason": decision.reason, "version": version,
            "gates": [{"name": g.name, "passed": g.passed, "detail": g.detail} for g in gates or []]}
