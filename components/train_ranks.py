"""A training step on every GPU of its pod: the step's process re-runs the stage under torchrun.

A step given `gpus: 4` sees four GPUs; as `kubetune train` does, it then launches one rank per
GPU (`kubetune.launch.torchrun`). Each rank runs `train_here`, the same code a one-GPU step runs
in its own process: the Trainer shards the batches, rank 0 alone logs to MLflow and writes the
outputs, and the step's process reads the result back from the stage's run_summary.json.

Run as `python -m kubetune.components.train_ranks <spec.json>` (by `run_on_ranks`, never by hand). On each node
of a multi-node job (`kubetune.components.train_nodes`) it runs as `... train_ranks --node <spec.json>`: the node
starts its own ranks under torchrun, sized by what Kubeflow Trainer or the Training Operator set
(`kubetune.launch.torchrun.node_plan`), and each rank runs as above.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kubetune.launch.torchrun import TorchrunPlan, run_torchrun


def train_here(config: str, stage: str, extra: dict[str, Any], parent_run_id: str) -> dict[str, Any]:
    """Run one stage in this process (one rank, or the whole step on one device); its metrics.

    Args:
        config: the pipeline config as YAML text.
        stage: sft, rm, dpo, kto, ppo or pt.
        extra: the stage's keys set by the step (output_dir, tokenized_path, adapters, overrides).
        parent_run_id: the pipeline's MLflow run ("" = tracking off).
    """
    from kubetune.config.pipeline import load_pipeline_config
    from kubetune.launch.progress import ProgressCallback
    from kubetune.stages import run_stage
    from kubetune.tracking.pipeline_tracking import stage_tracking

    cfg = load_pipeline_config(text=config)
    run_cfg = cfg.stage_config(stage, **extra)
    with stage_tracking(cfg, run_cfg, parent_run_id, stage) as tracking:
        result = run_stage(run_cfg, callbacks=[*tracking.callbacks, ProgressCallback(stage)])
        tracking.log_result(result.metrics, result.files)
    return result.metrics


def write_rank_spec(work: Path, config: str, stage: str, extra: dict[str, Any], parent_run_id: str) -> Path:
    """The file every rank reads `train_here`'s arguments from (`main`); its path.

    Beside the work directory, not in it: the work directory's files become the step's output artifact.
    """
    spec = work.parent / f".{work.name}.rank_spec.json"
    spec.write_text(json.dumps({"config": config, "stage": stage, "extra": extra, "parent_run_id": parent_run_id}))
    return spec


def run_on_ranks(plan: TorchrunPlan, config: str, stage: str, extra: dict[str, Any], parent_run_id: str,
                 work: Path) -> dict[str, Any]:
    """Run `train_here` on every rank of `plan`; the metrics rank 0 wrote to `<work>/run_summary.json`.

    Raises:
        Preempted: a SIGTERM stopped the ranks after they saved a checkpoint (rank 0's `preempted.json`).
        RuntimeError: a rank failed (torchrun stops the others); its log is in the step's log above.
    """
    from kubetune.config.pipeline import load_pipeline_config
    from kubetune.train.preemption import clear_preempted_marker, read_preempted
    from kubetune.train.result import SUMMARY_FILE

    # torchrun gives the ranks this long after a SIGTERM before it kills them (a few seconds more, so the ranks'
    # own late-checkpoint message comes first): without it, torchrun's 30 s default would cut a longer grace
    grace = load_pipeline_config(text=config).stage_config(stage, **extra).train.save_on_sigterm_grace
    spec = write_rank_spec(work, config, stage, extra, parent_run_id)
    summary = work / SUMMARY_FILE
    summary.unlink(missing_ok=True)  # a retried step's old summary must not pass for this run's
    clear_preempted_marker(work)  # only this launch's pre-emption is read back below
    print(f"kubetune {stage}: launching torchrun: {plan.describe()}", file=sys.stderr, flush=True)
    try:
        code = run_torchrun(plan, [str(spec)], module="kubetune.components.train_ranks", shutdown_timeout=grace)
    finally:
        spec.unlink(missing_ok=True)  # it holds the whole config, tokens included: not left on the volume
    preempted = read_preempted(work) if code != 0 else None
    if preempted is not None:  # the ranks stopped on a SIGTERM after saving: torchrun's own code says nothing
        raise preempted
    if code != 0:
        raise RuntimeError(f"the {stage} step's torchrun ({plan.describe()}) exited with code {code}; "
                           "the failing rank's traceback is in the log above")
    return json.loads(summary.read_text())["metrics"]


def run_node(spec: Path) -> int:
    """One node of a multi-node job: torchrun over this node's GPUs, every rank running `main([spec])`."""
    from kubetune.launch.torchrun import node_plan

    plan = node_plan()
    print(f"kubetune: node {plan.node_rank} of {plan.nnodes}: launching torchrun: {plan.describe()}",
          file=sys.stderr, flush=True)
    return run_torchrun(plan, [str(spec)], module="kubetune.components.train_ranks")


def main(argv: list[str]) -> int:
    import logging
    import os

    if argv and argv[0] == "--node":
        return run_node(Path(argv[1]))

    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="[%(levelname)s|%(name)s] %(message)s")
    from kubetune.train.preemption import PREEMPTED_EXIT_CODE, Preempted

    spec = json.loads(Path(argv[0]).read_text())
    try:
        train_here(spec["config"], spec["stage"], spec["extra"], spec["parent_run_id"])
    except Preempted as err:  # a clean stop with a checkpoint, not a crash: no traceback, the step says it once
        if os.environ.get("RANK", "0") == "0":
            print(f"kubetune {spec['stage']} (rank 0): {err}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
