"""What every KFP component calls: map KFP's artifacts and parameters onto the library.

Components (one file each in this folder) stay thin — they only name their inputs and
outputs. Everything they do is here, as plain functions over local paths, so it is testable
without KFP and identical under `kfp.local` and on a cluster.

Each step appends one line (step, status, seconds) to `$KUBETUNE_STEP_LOG` when set, so
`kubetune run` can print a summary of the run, and prints marked start/end/progress events for its
console (`kubetune.launch.console`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubetune.config.pipeline import PipelineConfig, load_pipeline_config
from kubetune.launch.console import emit
from kubetune.paths import cache_root

logger = logging.getLogger("kubetune.components")

STEP_LOG_ENV = "KUBETUNE_STEP_LOG"
# `kubetune run` puts the steps' work directories under its --output; on a cluster they live on the cache PVC
WORK_DIR_ENV = "KUBETUNE_WORK_DIR"


@contextmanager
def step(name: str) -> Iterator[dict[str, Any]]:
    """Time a step and record its outcome in the step log (for `kubetune run`'s summary)."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s|%(name)s] %(message)s")
    record: dict[str, Any] = {"step": name}
    emit("start", step=name)
    start = time.perf_counter()
    try:
        yield record
        record["status"] = "succeeded"
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"[:2000]
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - start, 1)
        emit("end", step=name, status=record["status"], seconds=record["seconds"], error=record.get("error"),
             note=record.get("note"))
        log = os.environ.get(STEP_LOG_ENV)
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=str) + "\n")


def parse(config: str) -> PipelineConfig:
    return load_pipeline_config(text=config)


def work_dir(run_id: str, step_name: str) -> Path:
    """A step's working directory on persistent storage: `$KUBETUNE_WORK_DIR` (`kubetune run` sets it
    under its --output), else `runs/` of the cache (the model-cache PVC on a cluster).

    Checkpoints live here rather than in the output artifact: a retried (pre-empted) pod finds
    them and resumes, while KFP uploads an output artifact only when a step succeeds.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in run_id or "local")
    root = Path(os.environ[WORK_DIR_ENV]) if os.environ.get(WORK_DIR_ENV) else cache_root() / "runs"
    path = root / safe / step_name
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- validate ---------------------------------------------------------------

def validate(config: str, run_id: str = "") -> str:
    """Check every step the DAG will run, then open the parent MLflow run.

    Each step's config is built as that step will build it — the training stages, evaluate and
    evaluate-base, export — and checked against the world (datasets, templates, model and adapter
    paths), and the promotion gate against what evaluate measures: every problem at once, in
    seconds, before anything trains.

    Returns the parent MLflow run id ("" when tracking is off).
    """
    with step("validate") as record:
        cfg = parse(config)
        from kubetune.tracking.pipeline_tracking import open_pipeline_run
        from kubetune.validate import preflight_pipeline

        preflight_pipeline(cfg)  # every step's world problems at once (kubetune.validate)
        parent = open_pipeline_run(cfg, run_id)
        record["mlflow_run_id"] = parent
        return parent


# --- preprocess -------------------------------------------------------------

def preprocess(config: str, stage: str, dataset_path: str) -> dict[str, Any]:
    """Tokenise the stage's data into `dataset_path` (a KFP Dataset artifact directory).

    Returns metadata for the artifact: the content hash (also the KFP cache key), row counts,
    and whether our own content-addressed cache already had it.
    """
    with step(f"preprocess-{stage}"):
        cfg = parse(config)
        run_cfg = cfg.stage_config(stage, output_dir=str(Path(dataset_path).parent), **cfg.pipeline_inputs(stage))
        from kubetune.data.pipeline import tokenized
        from kubetune.data.setup import tokenizer_and_template
        from kubetune.data.stage_key import preprocess_splits

        # the tokenizer alone: no weights are loaded (the embedded model is converted on first use, though)
        tokenizer, template = tokenizer_and_template(run_cfg)
        train, evaluate = preprocess_splits(run_cfg)  # the splits the compile-time cache key assumed
        data = tokenized(run_cfg.data, tokenizer, template, stage=stage, seed=run_cfg.train.seed,
                         train=train, evaluate=evaluate)
        out = Path(dataset_path)
        _copy_tree(_tokenized_dir(data.key, run_cfg.data.tokenized_path), out)
        return {"content_hash": data.key, "train_rows": len(data.train) if data.train is not None else 0,
                "eval_rows": len(data.eval) if data.eval is not None else 0, "cache_hit": data.cache_hit,
                "stage": stage}


def _tokenized_dir(key: str, tokenized_path: str | None) -> Path:
    return Path(tokenized_path) if tokenized_path else cache_root() / "tokenized" / key


def _copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


# --- train ------------------------------------------------------------------

def train(config: str, stage: str, dataset_path: str, model_path: str, *, run_id: str = "",
          parent_run_id: str = "", base_adapter: str | None = None, reward_model: str | None = None,
          overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """Run one training stage on preprocessed data; write the adapter (or model) to `model_path`.

    Training happens in a persistent work directory so a retried step resumes from its last
    checkpoint; the finished outputs are then copied into the output artifact.

    Args:
        config: the pipeline config as YAML text.
        stage: sft, rm, dpo, kto, ppo or pt.
        dataset_path: the preprocess step's Dataset artifact (tokenised splits).
        model_path: the output Model artifact directory.
        run_id: the KFP run id (keys the work directory).
        parent_run_id: the pipeline's MLflow run (a nested run is opened under it).
        base_adapter: an earlier stage's adapter to continue from (sft → dpo/kto/ppo).
        reward_model: the rm stage's output, for ppo.
        overrides: per-run knobs from pipeline parameters (0 / "" values mean "use the config").
    """
    from kubetune.train.preemption import exit_when_preempted

    # a pre-empted step exits 75 (not 1) with a message; KFP's retry runs the same command, which resumes
    with step(stage) as record, exit_when_preempted(stage):
        cfg = parse(config)
        extra: dict[str, Any] = {k: v for k, v in (overrides or {}).items() if v not in (0, 0.0, "", None)}
        work = work_dir(run_id, stage)
        extra.update(output_dir=str(work), tokenized_path=dataset_path)
        if base_adapter:
            extra["adapter_name_or_path"] = base_adapter
            extra.update(cfg.reference_after_sft(stage, base_adapter))  # ppo/dpo/kto: the SFT model as reference
        if reward_model:
            extra["reward_model"] = reward_model
        stage_cfg = cfg.stage_config(stage, **extra)  # a bad key fails here, in the step's own process, first
        from kubetune.components.train_ranks import run_on_ranks, train_here
        from kubetune.launch.torchrun import torchrun_plan

        nodes = cfg.resources_for(stage).nodes
        from kubetune.launch.node_job import NODES_LAUNCHER_ENV

        on_nodes = nodes > 1 and os.environ.get(NODES_LAUNCHER_ENV) == "1"  # the compiled step launches the job
        if nodes > 1 and not on_nodes:
            logger.warning("%s: resources.%s.nodes: %d launches a Kubeflow Trainer job from a compiled pipeline; "
                           "run here (kubetune run), the stage trains in this step", stage, stage, nodes)
        # several GPUs in the pod (or FORCE_TORCHRUN, or DeepSpeed, which wants a launcher): one rank each
        plan = None if on_nodes else torchrun_plan(force=bool(stage_cfg.train.deepspeed))
        if on_nodes:
            from kubetune.components.train_nodes import run_on_nodes

            metrics = run_on_nodes(cfg, config, stage, extra, parent_run_id, work, run_id)
        elif plan is None:
            metrics = train_here(config, stage, extra, parent_run_id)
        else:
            metrics = run_on_ranks(plan, config, stage, extra, parent_run_id, work)
        _copy_outputs(work, Path(model_path))
        record["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        return record["metrics"]


def _copy_outputs(work: Path, target: Path) -> None:
    """The final adapter/model and its reports, without checkpoints (they stay in the work dir)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in work.iterdir():
        if item.name.startswith("checkpoint-"):
            continue
        dest = target / item.name
        if item.is_dir():
            _copy_tree(item, dest)
        else:
            shutil.copy2(item, dest)


# --- evaluate ---------------------------------------------------------------

def evaluate(config: str, adapter_path: str | None, report_path: str, predictions_path: str, *, run_id: str = "",
             parent_run_id: str = "", html_path: str | None = None, reward_model_path: str | None = None,
             step_name: str = "evaluate") -> dict[str, float]:
    """The candidate and its baseline on the evaluation rows, in one step (`kubetune.evaluate.candidate_vs_baseline`).

    Args:
        adapter_path: the trained adapter to score.
        report_path: the Markdown report (the candidate's metrics and predictions).
        html_path: the HTML report, candidate beside baseline (also logged to the step's MLflow run).
        reward_model_path: a reward model trained in this run (rlhf: the rm stage's) scoring both sides' answers.
    """
    with step(step_name) as record:
        cfg = parse(config)
        work = work_dir(run_id, step_name)
        run_cfg = cfg.eval_config(adapter_path, output_dir=str(work / "candidate"))
        from kubetune.evaluate.candidate_vs_baseline import compare, find_baseline, read_predictions
        from kubetune.evaluate.report import write_report
        from kubetune.stages import run_stage
        from kubetune.tracking.pipeline_tracking import stage_tracking, tracking_uri

        with stage_tracking(cfg, run_cfg, parent_run_id, step_name) as tracking:
            def run_eval(side_cfg: Any, side: str) -> tuple[dict[str, float], list[dict[str, str]]]:
                # the candidate's numbers go to the step's run as it evaluates; the baseline's only in the result
                result = run_stage(side_cfg, callbacks=tracking.callbacks if side == "candidate" else [])
                metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
                return metrics, read_predictions(Path(side_cfg.train.output_dir) / "generated_predictions.jsonl")

            if cfg.evaluation.baseline:
                baseline = find_baseline(cfg, tracking_uri(cfg) if parent_run_id else None)
                comparison = compare(cfg, run_cfg, baseline, run_eval, reward_model=reward_model_path)
                metrics, report = comparison.metrics, comparison.report
                record["baseline"] = baseline.label + (f" ({baseline.note})" if baseline.note else "")
            else:
                metrics, _ = run_eval(run_cfg, "candidate")
                report = None
            files = {}
            if report is not None and adapter_path:
                report.loss_curve = training_loss_curve(Path(adapter_path))
            if html_path and report is not None:
                files["report"] = str(write_report(report, work / "evaluation.html"))
                shutil.copy2(files["report"], html_path)
            tracking.log_result(metrics, files)
        Path(report_path).write_text(eval_report(cfg, metrics, work / "candidate"), encoding="utf-8")
        predictions = work / "candidate" / "generated_predictions.jsonl"
        if predictions.is_file():
            shutil.copy2(predictions, predictions_path)
        else:
            Path(predictions_path).write_text("")
        record["metrics"] = metrics
        gate = cfg.promotion.metric
        if gate in metrics:
            record["note"] = f"{gate} {metrics[gate]:.4f}" + (
                f" (baseline {metrics['baseline/' + gate]:.4f})" if f"baseline/{gate}" in metrics else "")
        return metrics


def training_loss_curve(adapter_dir: Path) -> list[tuple[float, float]]:
    """(step, loss) of the training step that made the adapter (its trainer_log.jsonl); [] when it has none."""
    from kubetune.tracking import TRAINER_LOG

    log = adapter_dir / TRAINER_LOG
    if not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(float(r["current_steps"]), float(r["loss"])) for r in rows if "loss" in r and "current_steps" in r]


def eval_report(cfg: PipelineConfig, metrics: dict[str, float], work: Path, examples: int = 5) -> str:
    """A Markdown report the KFP UI renders: the metrics (candidate, baseline, delta) and a few predictions."""
    lines = [f"# Evaluation — {cfg.name}", "", "| metric | candidate | baseline | delta |", "|---|---|---|---|"]
    for name, value in sorted(metrics.items()):
        if name.startswith(("baseline/", "delta/")) or name.endswith(("runtime", "per_second")):
            continue
        base, delta = metrics.get(f"baseline/{name}"), metrics.get(f"delta/{name}")
        lines.append(f"| {name} | {value:.4f} | {'' if base is None else f'{base:.4f}'} | "
                     f"{'' if delta is None else f'{delta:+.4f}'} |")
    predictions = work / "generated_predictions.jsonl"
    if predictions.is_file():
        lines += ["", "## Sample predictions", "", "| prediction | reference |", "|---|---|"]
        for line in predictions.read_text(encoding="utf-8").splitlines()[:examples]:
            row = json.loads(line)
            lines.append(f"| {_cell(row['predict'])} | {_cell(row['label'])} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


# --- export, register, promote ----------------------------------------------

def export(config: str, adapter_path: str, model_path: str) -> dict[str, Any]:
    """Merge the adapter into the base; write safetensors shards into `model_path` (and to S3 when set)."""
    with step("export"):
        cfg = parse(config)
        run_cfg = cfg.export_config(adapter_path, export_dir=model_path)  # the full-precision base, even for QLoRA
        from kubetune.export import export as merge_and_save

        merge_and_save(run_cfg)
        remote = ""
        if cfg.s3.artifact_prefix:
            from kubetune.storage import join, upload_dir

            remote = upload_dir(Path(model_path), join(cfg.s3.artifact_prefix, "models", cfg.name,
                                                       time.strftime("%Y%m%d-%H%M%S")))
        return {"base_model": run_cfg.model.model_name_or_path, "s3_uri": remote}


def register(config: str, model_path: str, metrics: dict[str, float], *, run_id: str = "",
             parent_run_id: str = "", data_hash: str = "", model_uri: str = "") -> str:
    """Register the merged model as a new version in the MLflow registry; returns the version.

    An export without its `_SUCCESS` marker (killed, or its upload cut short) is refused with
    `IncompleteExportError` naming the path; a retried step returns the version its first attempt made.
    """
    with step("register") as record:
        cfg = parse(config)
        from kubetune.tracking.pipeline_tracking import register_version

        version = register_version(cfg, model_uri or model_path, metrics, parent_run_id=parent_run_id,
                                   kfp_run_id=run_id, data_hash=data_hash)
        record["version"] = version
        return version


def promote(config: str, version: str, metrics: dict[str, float]) -> dict[str, Any]:
    """Move the `champion` alias to `version` only if its gate metric beats the champion's.

    Safe against a promotion of another pipeline racing for `champion` (the better one ends there) and
    refuses a version whose export did not finish (`kubetune.tracking.registry.promote`).
    """
    with step("promote") as record:
        cfg = parse(config)
        from kubetune.tracking.pipeline_tracking import promote_version

        decision = promote_version(cfg, version, metrics)
        record["decision"] = decision
        return decision


def publish(metrics: dict[str, float], metrics_artifact: Any, model_artifact: Any, *, stage: str,
            data_hash: str = "") -> None:
    """Write a stage's scalar results into its Metrics artifact and lineage into its Model artifact."""
    for name, value in metrics.items():
        metrics_artifact.log_metric(name, float(value))
    model_artifact.metadata.update({"stage": stage, "data_hash": data_hash})


def gate_metric(config: str, metrics: dict[str, float]) -> float:
    """The promotion gate metric's value; a clear error names the metrics that do exist."""
    name = parse(config).promotion.metric
    if name not in metrics:
        raise KeyError(f"promotion.metric {name!r} was not measured; available: {', '.join(sorted(metrics))}")
    return float(metrics[name])


# --- finalize (the exit handler) ---------------------------------------------

def finalize(config: str, run_id: str, pipeline_state: str) -> str:
    """Close this pipeline run's MLflow runs with its outcome; returns the MLflow status it set ("" if none).

    Args:
        config: the pipeline config as YAML text.
        run_id: the KFP run id the parent run is tagged with.
        pipeline_state: KFP's final state of the steps (SUCCEEDED, FAILED, CANCELED, ...).
    """
    with step("finalize") as record:
        cfg = parse(config)
        from kubetune.tracking.pipeline_tracking import close_pipeline_run

        status = close_pipeline_run(cfg, run_id, pipeline_state)
        record["mlflow_status"] = status
        return status

