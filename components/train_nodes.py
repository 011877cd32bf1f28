"""A training step on several nodes: the step's pod launches the stage as a Kubeflow Trainer job and waits.

With `resources.<stage>.nodes > 1` the step is a launcher (placement gives its pod CPU only): it puts what the
nodes need on the shared volume — the rank spec `train_ranks` reads, and the step's input artifacts, which KFP
downloaded into this pod alone — starts the job (`kubetune.launch.node_job`, `job_runner`), copies node 0's log
into its own, and reads the metrics rank 0 wrote to the work directory, which is on the same volume. The step
then copies the work directory's outputs into its Model artifact, as a one-pod step does.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from kubetune.config.pipeline import PipelineConfig

# inputs that name a path in this pod: copied beside the work directory so every node reads the same files
PATH_KEYS = ("tokenized_path", "adapter_name_or_path", "reward_model", "ref_model_adapters")


def share_inputs(extra: dict[str, Any], work: Path) -> dict[str, Any]:
    """`extra` with every local input path replaced by a copy on the shared volume (beside `work`).

    A path already under the work directory's parent (the volume) is left as it is.
    """
    shared = dict(extra)
    root = work.parent
    for key in PATH_KEYS:
        value = shared.get(key)
        if not isinstance(value, str) or not value or "://" in value or not Path(value).exists():
            continue
        source = Path(value).resolve()
        if source.is_relative_to(root.resolve()):
            continue
        target = root / f".{work.name}.inputs" / key
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
        shared[key] = str(target)
    return shared


def run_on_nodes(cfg: PipelineConfig, config: str, stage: str, extra: dict[str, Any], parent_run_id: str,
                 work: Path, run_id: str, api_client: Any = None, namespace: str | None = None,
                 poll_s: float = 10.0) -> dict[str, Any]:
    """Run the stage as a job on `resources.<stage>.nodes` nodes; the metrics rank 0 wrote.

    Args:
        cfg: the pipeline config (`config` parsed).
        config: the pipeline config as YAML text (each rank parses it again).
        stage: the training stage.
        extra: the stage's keys set by the step (output_dir = `work`, tokenized_path, adapters, overrides).
        parent_run_id: the pipeline's MLflow run.
        work: the stage's work directory, on the shared volume.
        run_id: the KFP run id (names the job: a retried step finds its own).
        api_client: a kubernetes `ApiClient` (default: the in-cluster configuration).
        namespace: where the job runs (default: this pod's namespace).
        poll_s: seconds between status reads.

    Raises:
        Preempted: the job failed because its pods were SIGTERM'd and rank 0 saved a checkpoint first (its
            `preempted.json` in the work directory, on the shared volume): the step exits 75 and a retry resumes.
        JobFailed, JobTimeout: from `kubetune.launch.job_runner`, naming the job and how to inspect it.
    """
    from kubetune.components.train_ranks import write_rank_spec
    from kubetune.launch.job_runner import JobFailed, JobRunner, outcome, own_namespace
    from kubetune.launch.node_job import node_job
    from kubetune.train.preemption import clear_preempted_marker, read_preempted
    from kubetune.train.result import SUMMARY_FILE

    spec = write_rank_spec(work, config, stage, share_inputs(extra, work), parent_run_id)
    job = node_job(cfg, stage, str(spec), run_id=run_id, namespace=namespace or own_namespace())
    if api_client is None:
        from kubernetes import client
        from kubernetes import config as kube_config

        kube_config.load_incluster_config()
        api_client = client.ApiClient()
    runner = JobRunner(job, api_client, poll_s=poll_s)
    summary = work / SUMMARY_FILE
    found = runner.get()
    if found is None or outcome(found, runner.kind)[0] == "failed":
        summary.unlink(missing_ok=True)  # a new job: an earlier run's summary must not pass for its own
        clear_preempted_marker(work)  # ... nor an earlier run's pre-emption
    try:
        runner.run()
    except JobFailed:
        preempted = read_preempted(work)  # the nodes' pods were SIGTERM'd after rank 0 saved a checkpoint
        if preempted is not None:
            raise preempted from None
        raise
    spec.unlink(missing_ok=True)  # done: it holds the whole config (a failed job keeps it for the step's retry)
    if not summary.is_file():
        raise RuntimeError(f"the {stage} job {job.name} completed but rank 0 wrote no {summary}: is "
                           f"{cfg.model_cache.pvc} mounted at {job.mount_path} on every node (ReadWriteMany)?")
    print(f"kubetune {stage}: {job.nodes} nodes done; outputs in {work}", file=sys.stderr, flush=True)
    return json.loads(summary.read_text())["metrics"]
