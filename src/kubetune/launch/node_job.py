"""What a training stage on several nodes asks the cluster for: one description, from the pipeline config.

A step with `resources.<stage>.nodes > 1` does not train in its own pod: it describes a job of `nodes` pods,
`gpus` each, that all run `python -m kubetune.components.train_ranks --node <spec>` (each node starts one rank per
GPU under torchrun), and hands it to Kubeflow Trainer as a `TrainJob` (`kubetune.launch.trainjob`) or to the
Training Operator as a `PyTorchJob` (`kubetune.launch.pytorchjob`); `kubetune.launch.job_runner` runs it.

Gang scheduling (`resources.<stage>.pod_group_policy`, Kubeflow Trainer's name for it) starts every node's pod
together or none: Kueue's queue label admits the job's GPUs as a whole, Volcano or the scheduler-plugins'
coscheduling place its pods as one pod group.

Every node mounts the model-cache PVC where the launcher's pod mounts it, so the stage's work directory — its
data, checkpoints and the trained model — is the same path everywhere, and a restarted job resumes from it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.config.pipeline import PipelineConfig

S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# JobSet names each node's pod `<job>-node-<i>-<j>-<5 chars>` and its host name `<job>-node-<i>-<j>`, which must stay
# a DNS label (63 characters); 40 leaves room for both, and for the Training Operator's `<job>-worker-<i>`
NAME_LIMIT = 40
WORKSPACE_VOLUME = "kubetune-workspace"

# Set by the compiled pipeline on a `nodes > 1` training step (`pipelines.placement.launcher`): that step's pod
# launches the job. Any other run of the step (kfp.local, even from a pod inside the cluster) trains in place.
NODES_LAUNCHER_ENV = "KUBETUNE_LAUNCHES_NODE_JOB"


@dataclass(frozen=True)
class NodeJob:
    """One multi-node training job, independent of the API that runs it.

    Attributes:
        name: the job's name (`job_name`: the same for every retry of one step).
        namespace: where it runs (the launcher's own namespace).
        kind: trainjob (Kubeflow Trainer v2) or pytorchjob (Training Operator v1).
        image: the trainer image.
        command: what each node runs.
        nodes: pods in the job, one per node.
        gpus: GPUs per node (0: CPU nodes; one rank each then).
        gpu_type: the GPU resource name (nvidia.com/gpu).
        cpu, memory: each node's request and limit (None: the runtime's).
        node_selector: node labels each pod must match.
        tolerations: taints each pod tolerates, in the Kubernetes API's spelling (tolerationSeconds).
        env: environment of every node, Kubernetes EnvVar dicts (secrets by reference, never by value).
        pvc: the shared volume's claim; mount_path: where it mounts (the launcher's KUBETUNE_CACHE).
        runtime: the ClusterTrainingRuntime a TrainJob references.
        labels: labels of the job (the Kueue queue, kubetune's run and stage).
        timeout_s: how long the launcher waits; keep: keep the job when it has finished.
        pod_group_policy: gang scheduling, volcano or coscheduling (None: none); a TrainJob's comes from its
            runtime, a PyTorchJob asks the operator for it (`runPolicy.schedulingPolicy`).
        volcano_queue: the Volcano queue of the job's pod group (None: Volcano's default queue).
    """

    name: str
    namespace: str
    kind: Literal["trainjob", "pytorchjob"]
    image: str
    command: list[str]
    nodes: int
    gpus: int
    gpu_type: str = "nvidia.com/gpu"
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    pvc: str = ""
    mount_path: str = "/cache/kubetune"
    runtime: str = "torch-distributed"
    labels: dict[str, str] = field(default_factory=dict)
    timeout_s: int = 7 * 24 * 3600
    keep: bool = False
    pod_group_policy: Literal["volcano", "coscheduling"] | None = None
    volcano_queue: str | None = None

    def resources(self) -> dict[str, dict[str, str]]:
        """Each node's requests and limits (GPUs as a limit: Kubernetes sets the request to match)."""
        limits: dict[str, str] = {}
        requests: dict[str, str] = {}
        if self.gpus:
            limits[self.gpu_type] = str(self.gpus)
        for name, value in (("cpu", self.cpu), ("memory", self.memory)):
            if value:
                limits[name] = requests[name] = str(value)
        return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}

    def volume(self) -> dict[str, Any]:
        return {"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": self.pvc}}

    def volume_mount(self) -> dict[str, Any]:
        return {"name": WORKSPACE_VOLUME, "mountPath": self.mount_path}


def job_name(run_id: str, stage: str) -> str:
    """The job's name: the same for every attempt of one step, so a retried step finds the job it started.

    DNS-1035 (a letter first; lowercase letters, digits and dashes), at most `NAME_LIMIT` characters: a readable
    `kt-<stage>-<run id's start>` and a hash of the full run id and stage, so two runs never share a name.

    Args:
        run_id: the KFP run id ("" outside KFP).
        stage: the stage the step trains.
    """
    digest = hashlib.sha256(f"{run_id}\0{stage}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9]+", "-", f"kt-{stage}-{run_id.lower()}").strip("-")
    return f"{readable[:NAME_LIMIT - len(digest) - 1].rstrip('-')}-{digest}"


def secret_env(secret: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Environment variables read from a Kubernetes secret by reference (optional, as the steps' own are)."""
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key in keys]


def node_env(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """What every node's environment needs from the config: the caches, MLflow and S3 (credentials by reference)."""
    env: list[dict[str, Any]] = [{"name": "KUBETUNE_CACHE", "value": cfg.model_cache.mount_path},
                                 {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if cfg.mlflow.tracking_uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": cfg.mlflow.tracking_uri})
    if cfg.s3.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": cfg.s3.endpoint_url})
    return [*env, *secret_env(cfg.s3.credentials_secret, S3_ENV),
            *secret_env(cfg.mlflow.credentials_secret, MLFLOW_ENV)]


def node_job(cfg: PipelineConfig, stage: str, spec_path: str, *, run_id: str, namespace: str) -> NodeJob:
    """The job that runs `stage` on `resources.<stage>.nodes` nodes, from the pipeline config.

    Args:
        cfg: the pipeline config (its `resources.<stage>`, images, model cache, MLflow and S3 sections).
        stage: the training stage.
        spec_path: the rank spec on the shared volume (`train_ranks` reads it on every node).
        run_id: the KFP run id (names the job and labels it).
        namespace: where the job runs.
    """
    res = cfg.resources_for(stage)
    labels = {"app.kubernetes.io/managed-by": "kubetune", "kubetune.io/stage": stage}
    if run_id:
        labels["kubetune.io/run"] = re.sub(r"[^A-Za-z0-9._-]", "-", run_id)[:63].strip("-._")
    if res.queue_name:
        labels["kueue.x-k8s.io/queue-name"] = res.queue_name
    tolerations = [{("tolerationSeconds" if k == "toleration_seconds" else k): v for k, v in t.items()
                    if v is not None} for t in res.tolerations]
    return NodeJob(name=job_name(run_id, stage), namespace=namespace, kind=res.trainer, image=cfg.image("trainer"),
                   command=["python", "-m", "kubetune.components.train_ranks", "--node", spec_path],
                   nodes=res.nodes, gpus=int(res.gpus or 0), gpu_type=res.gpu_type or "nvidia.com/gpu",
                   cpu=res.cpu, memory=res.memory, node_selector=dict(res.node_selector), tolerations=tolerations,
                   env=node_env(cfg), pvc=cfg.model_cache.pvc or "", mount_path=cfg.model_cache.mount_path,
                   runtime=res.runtime, labels=labels, timeout_s=res.job_timeout_s, keep=res.keep_job,
                   pod_group_policy=res.pod_group_policy, volcano_queue=res.volcano_queue)
