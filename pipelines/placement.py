"""Where and how each step runs on the cluster: GPU pools, secrets, the model cache, retries, caching.

All of this is compiled into the pipeline YAML from the pipeline config. `kfp.local` ignores it
(it runs every step as a local process), so tests assert it on the compiled YAML.
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from kubetune.config.errors import ConfigError, Problem
from kubetune.config.pipeline import PipelineConfig, Resources
from kubetune.launch import node_job

# secret key -> env name; the same keys a multi-node job's pods read (kubetune.launch.node_job)
S3_ENV = {key: key for key in node_job.S3_ENV}
MLFLOW_ENV = {key: key for key in node_job.MLFLOW_ENV}
# a launcher step's pod (nodes > 1): it copies files and polls the API; the training runs in the job's pods
LAUNCHER_CPU = "1"
LAUNCHER_MEMORY = "2Gi"


def auto_gpus(cfg: PipelineConfig, step: str, gpu_memory_gib: float) -> int:
    """`gpus: auto`: the fewest GPUs that fit a training step by `kubetune estimate`; other steps get one.

    More than one only where the step shards the model (DeepSpeed ZeRO, FSDP): under DDP every GPU
    holds the whole model, so a second GPU adds speed but never room.
    """
    if step not in cfg.stages_to_validate():
        return 1  # evaluate/export run a model forward only: one GPU of a pool sized for training fits it
    from kubetune.estimate import gpus_that_fit, sharding_stage

    run_cfg = cfg.stage_config(step, **cfg.pipeline_inputs(step))
    sharding = sharding_stage(run_cfg)
    gpus = gpus_that_fit(run_cfg, gpu_memory_gib, zero_stage=sharding)
    if gpus is not None:
        return gpus
    where = f"resources.{step}.gpus"
    if not sharding:
        sharded = gpus_that_fit(run_cfg, gpu_memory_gib, zero_stage=3)
        hint = (f"set deepspeed: examples/deepspeed/ds_z3_config.json under stages.{step} (ZeRO-3 fits it on "
                f"{sharded} GPUs by the estimate)" if sharded else "use QLoRA or a smaller cutoff_len or batch")
        raise ConfigError([Problem(where, "auto", cfg.source or "pipeline config",
                                   f"the {step} step does not fit one GPU of {gpu_memory_gib:g} GiB by the estimate, "
                                   "and without DeepSpeed ZeRO or FSDP every GPU holds the whole model",
                                   f"{hint}, or set gpus explicitly; `kubetune estimate` shows the breakdown")],
                          cfg.source)
    raise ConfigError([Problem(where, "auto", cfg.source or "pipeline config",
                               f"the {step} step does not fit on 8 GPUs of {gpu_memory_gib:g} GiB by the estimate",
                               "use QLoRA, a smaller cutoff_len or batch, larger GPUs (gpu_memory_gib), or set "
                               "gpus explicitly; `kubetune estimate` shows the breakdown")], cfg.source)


def place(task: PipelineTask, step: str, cfg: PipelineConfig, *, s3_secret: object, mlflow_secret: object,
          training: bool = False, local: bool = False) -> PipelineTask:
    """Apply the config's resources, secrets, cache mount, retries and caching to one step.

    Args:
        task: the step.
        step: its name in `resources` (sft, rm, ppo, dpo, kto, evaluate, ...; falls back to `default`).
        cfg: the pipeline config.
        s3_secret, mlflow_secret: secret names (pipeline parameters, so a run can point elsewhere).
        training: training steps are retried (pre-emptible GPUs) and not cached unless asked.
        local: the pipeline runs here through kfp.local (`kubetune run`): the model-cache PVC does not exist,
            so its mount path must not become the steps' KUBETUNE_CACHE (caches stay in the user's own); and
            a failed training step is not retried (no pre-emption here: a retry would fail the same way after
            minutes of backoff).
    """
    res = cfg.resources_for(step)
    if training and res.nodes > 1 and not local:
        launcher(task, res)
    else:
        pod(task, cfg, step, res)
    # optional: a cluster that reaches S3 through an IAM role or an unauthenticated MLflow has no such secret
    kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=S3_ENV, optional=True)
    kubernetes.use_secret_as_env(task, secret_name=mlflow_secret, secret_key_to_env=MLFLOW_ENV, optional=True)
    for name, keys in cfg.env_secrets.items():  # the hub token, a judge endpoint's key, ...
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=dict(keys), optional=True)
    if cfg.s3.endpoint_url:
        task.set_env_variable("AWS_ENDPOINT_URL", cfg.s3.endpoint_url)
    if cfg.mlflow.tracking_uri:
        task.set_env_variable("MLFLOW_TRACKING_URI", cfg.mlflow.tracking_uri)
    if cfg.model_cache.pvc and not local:
        kubernetes.mount_pvc(task, pvc_name=cfg.model_cache.pvc, mount_path=cfg.model_cache.mount_path)
        task.set_env_variable("KUBETUNE_CACHE", cfg.model_cache.mount_path)
    if training:
        r = cfg.retry
        if r.count and not local:  # kfp.local honours retries too; here a failure is no pre-emption, so it is final
            task.set_retry(num_retries=r.count, backoff_duration=r.backoff_duration, backoff_factor=r.backoff_factor,
                           backoff_max_duration=r.backoff_max_duration)
        task.set_caching_options(enable_caching=cfg.caching.training)
    return task


def pod(task: PipelineTask, cfg: PipelineConfig, step: str, res: Resources) -> None:
    """The step's own pod: its GPUs, CPU, memory, GPU pool (node selector) and tolerations."""
    gpus = auto_gpus(cfg, step, res.gpu_memory_gib) if res.gpus == "auto" else res.gpus
    if gpus:
        task.set_accelerator_type(res.gpu_type or "nvidia.com/gpu")
        task.set_accelerator_limit(gpus)
    if res.cpu:
        task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu)
    if res.memory:
        task.set_memory_request(res.memory).set_memory_limit(res.memory)
    for key, value in sorted(res.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in res.tolerations:
        kubernetes.add_toleration(task, key=toleration.get("key"), operator=toleration.get("operator"),
                                  value=toleration.get("value"), effect=toleration.get("effect"),
                                  toleration_seconds=toleration.get("toleration_seconds"))


def launcher(task: PipelineTask, res: Resources) -> None:
    """A step on several nodes: its pod only launches the Trainer job and waits, so it asks for CPU alone.

    The GPUs, CPU, memory, node selector and tolerations are each node's: the step reads them from the config
    (its `config` parameter) and puts them on the job (`kubetune.launch.node_job`), not on this pod. KFP's
    TaskConfig passthrough could carry them instead, but it is declared per component (every stage's one
    component would lose its own GPUs when nodes is 1), and a KFP backend older than the passthrough would apply
    the GPUs to this pod too. The pod runs as the run's service account (KFP has no per-step one), which the
    chart's `rbac.trainerJobs` Role lets create and follow the job.
    """
    task.set_cpu_request(LAUNCHER_CPU).set_cpu_limit(LAUNCHER_CPU)
    task.set_memory_request(LAUNCHER_MEMORY).set_memory_limit(LAUNCHER_MEMORY)
    task.set_env_variable(node_job.NODES_LAUNCHER_ENV, "1")  # only the compiled step launches a job
    kubernetes.add_pod_label(task, label_key="kubetune.io/launches", label_value=res.trainer)
    kubernetes.add_pod_label(task, label_key="kubetune.io/nodes", label_value=str(res.nodes))


def preprocess_cache_key(cfg: PipelineConfig, stage: str) -> str:
    """KFP cache key of a preprocess step: the data pipeline's own cache key of the rows it will build.

    Computed by `kubetune.data.stage_key`, so it is the key the step computes at run time; what it
    cannot hash at compile time (an unreachable tokenizer, missing data files) it names instead,
    with a `CacheKeyWarning`.

    Args:
        cfg: the pipeline config.
        stage: the stage the step preprocesses for.
    """
    from kubetune.data.stage_key import preprocess_cache_key as data_cache_key

    return data_cache_key(cfg.stage_config(stage, **cfg.pipeline_inputs(stage)), stage).key
