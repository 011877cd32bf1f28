"""The pipeline config: one file that describes a whole run of the DAG.

Top-level keys are LLaMA-Factory's (shared by every stage: `model_name_or_path`, `template`,
`finetuning_type`, `cutoff_len`, ...). Per-stage overrides go under `stages:`. The sections
`evaluation`, `export`, `promotion`, `resources`, `mlflow`, `s3`, `images`, `retry` and
`caching` configure the pipeline itself. `PipelineConfig.stage_config("sft")` gives the
validated `RunConfig` a stage will run with, so a pipeline is checked as a whole, for every
stage it will run, before anything starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import kubetune
from kubetune.config.config_text import parse_config_text, shape_problem
from kubetune.config.errors import ConfigError, Problem, shown_key
from kubetune.config.loader import canonical_keys, known_keys, read_config_file, validate_raw
from kubetune.config.nodes import TRAINING_STEPS, node_problems
from kubetune.config.rules_dpo import REFERENCE_FREE_LOSSES
from kubetune.config.schema import RunConfig, field_owner
from kubetune.config.secrets import pipeline_secret_problems

Stage = Literal["sft", "rm", "ppo", "dpo", "kto", "pt"]
PIPELINES = ("sft", "dpo", "kto", "rlhf", "full")
PIPELINE_INPUT = "pipeline:"  # a value an earlier step of the pipeline fills in (e.g. reward_model: pipeline:rm)
# which stages each pipeline may run (full: sft, then the one `alignment` picks; dpo/kto: also rm when
# configured, see `stages_to_run`)
PIPELINE_STAGES: dict[str, tuple[str, ...]] = {
    "sft": ("sft",), "dpo": ("sft", "dpo"), "kto": ("sft", "kto"), "rlhf": ("sft", "rm", "ppo"),
    "full": ("sft", "rm", "ppo", "dpo", "kto"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Section):
    """What one step's pod asks for on the cluster (ignored by local runs)."""

    gpus: int | Literal["auto"] = Field(0, description="GPUs per pod (0 = CPU only; auto = the fewest that fit "
                                                       "the stage by `kubetune estimate`, at compile time).")
    gpu_memory_gib: float = Field(80.0, gt=0, description="Memory of one GPU of the pool, in GiB (for gpus: auto).")
    gpu_type: str | None = Field(None, description="Accelerator type, e.g. nvidia.com/gpu or NVIDIA_TESLA_A100.")
    cpu: str | None = Field(None, description="CPU request/limit, e.g. '4'.")
    memory: str | None = Field(None, description="Memory request/limit, e.g. '32Gi'.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod must match.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Taints the pod tolerates.")
    # many nodes: the step becomes a launcher that runs the stage as a Kubeflow Trainer job (kubetune.launch.node_job)
    nodes: int = Field(1, ge=1, description="Nodes a training stage runs on, `gpus` each (>1: a Kubeflow Trainer job).")
    trainer: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob", description="nodes > 1: a Trainer v2 TrainJob, or a Training Operator v1 PyTorchJob.")
    runtime: str = Field("torch-distributed", min_length=1,
                         description="nodes > 1, trainjob: the ClusterTrainingRuntime the TrainJob references.")
    queue_name: str | None = Field(None, description="nodes > 1: the Kueue LocalQueue (kueue.x-k8s.io/queue-name).")
    keep_job: bool = Field(False, description="nodes > 1: keep the finished job (and its pods' logs) for inspection.")
    job_timeout_s: int = Field(7 * 24 * 3600, gt=0, description="nodes > 1: how long the step waits for the job.")
    # gang scheduling in Kubeflow Trainer's words (a runtime's `podGroupPolicy`): all nodes start together or none
    pod_group_policy: Literal["volcano", "coscheduling"] | None = Field(
        None, description="nodes > 1: gang-schedule the job's pods with Volcano or the scheduler-plugins' "
                          "coscheduling (trainjob: the runtime's podGroupPolicy; pytorchjob: runPolicy."
                          "schedulingPolicy).")
    volcano_queue: str | None = Field(None, min_length=1, description="pod_group_policy volcano: the Volcano queue "
                                                                      "(scheduling.volcano.sh/queue-name).")


class Promotion(_Section):
    registered_model: str = Field("kubetune-model", description="MLflow registered model name.")
    metric: str = Field("eval_loss", description="Gate metric compared with the current champion.")
    greater_is_better: bool = Field(False, description="Direction of the gate metric.")
    min_delta: float = Field(0.0, ge=0.0, description="How much better the candidate must be to become champion.")
    no_regression: dict[str, float] = Field(
        default_factory=dict, description="metric → tolerance: none may be worse than the baseline's by more "
                                          "(e.g. {benchmark/Average: 0.5}); loss/perplexity lower is better.")
    min_judge_win_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="The judge's win rate of the candidate over the baseline must reach this "
                                          "(needs evaluation.judge_model).")
    min_reward_delta: float | None = Field(
        None, description="The mean reward gap, candidate − baseline, under the reward model must reach this.")


class MLflowSettings(_Section):
    tracking_uri: str | None = Field(None, description="MLflow server URL (default: a local sqlite store).")
    experiment: str = Field("kubetune", description="MLflow experiment name.")
    credentials_secret: str = Field("mlflow-credentials", description="Kubernetes secret with MLflow env vars.")


class S3Settings(_Section):
    endpoint_url: str | None = Field(None, description="S3 API endpoint (MinIO, moto); None = AWS.")
    artifact_prefix: str | None = Field(None, description="s3://bucket/prefix for exported models.")
    credentials_secret: str = Field("s3-credentials", description="Kubernetes secret with AWS_* env vars.")


class Images(_Section):
    runtime: str | None = Field(None, description="CPU image for light steps (default: from the package version).")
    trainer: str | None = Field(None, description="CUDA image for training steps (default: from the version).")


class Retry(_Section):
    count: int = Field(3, ge=0, description="Retries of a training step (pre-emptible GPUs).")
    backoff_duration: str = Field("60s", description="Wait before the first retry.")
    backoff_factor: float = Field(2.0, ge=1.0, description="Backoff multiplier.")
    backoff_max_duration: str = Field("3600s", description="Longest wait between retries.")


class Caching(_Section):
    preprocess: bool = Field(True, description="Cache preprocessing (the key is the data content hash).")
    training: bool = Field(False, description="Cache training steps (off: retraining is the point).")


class ModelCache(_Section):
    pvc: str | None = Field(None, description="PVC holding base weights per node (None: no mount).")
    mount_path: str = Field("/cache/kubetune", description="Where the PVC mounts; becomes KUBETUNE_CACHE.")


class Evaluation(_Section):
    """Keys for the evaluate steps: LLaMA-Factory names (eval_dataset, max_new_tokens, do_sample, ...).

    `dataset` here names the evaluation data, as `eval_dataset` does (a platform user's natural word
    for it); giving both is refused.
    """

    model_config = ConfigDict(extra="allow")

    baseline: bool = Field(True, description="Score the baseline in the same step on the same rows: the registered "
                                             "champion's model if there is one, else the base model.")
    judge_model: str | None = Field(
        None, description="Judge the candidate's answers against the baseline's: a local model path, or an "
                          "OpenAI-compatible endpoint URL (https://host/v1).")
    judge_endpoint_model: str = Field("judge", description="The model name the judge endpoint serves.")
    judge_api_key_env: str = Field(
        "JUDGE_API_KEY", description="The environment variable holding the judge endpoint's key (from a Secret).")
    judge_max_prompts: int = Field(50, gt=0, description="Judge at most this many prompts (the first ones).")
    reward_model: str | None = Field(
        None, description="A reward model (rm output_dir) scoring both sides' answers; a pipeline that trains "
                          "one (rlhf; dpo/kto with a stages.rm section) uses its rm step's output instead.")
    reward_model_type: Literal["lora", "full"] = Field("lora", description="How reward_model was trained.")


class PipelineConfig(_Section):
    model_config = ConfigDict(extra="allow")  # the shared LLaMA-Factory keys live at the top level

    name: str = Field("kubetune", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="Pipeline name (lowercase letters, digits, dashes).")
    pipeline: Literal["sft", "dpo", "kto", "rlhf", "full"] = Field("sft", description="Which DAG to run.")
    alignment: Literal["ppo", "dpo", "kto", "none"] = Field("none", description="full pipeline: the alignment step.")
    stages: dict[Stage, dict[str, Any]] = Field(default_factory=dict, description="Per-stage key overrides.")
    evaluation: Evaluation = Field(default_factory=Evaluation)
    export: dict[str, Any] = Field(default_factory=dict, description="export_size, export_dir, ...")
    promotion: Promotion = Field(default_factory=Promotion)
    resources: dict[str, Resources] = Field(default_factory=dict, description="Per step name, or `default`.")
    mlflow: MLflowSettings = Field(default_factory=MLflowSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    images: Images = Field(default_factory=Images)
    retry: Retry = Field(default_factory=Retry)
    caching: Caching = Field(default_factory=Caching)
    model_cache: ModelCache = Field(default_factory=ModelCache)
    env_secrets: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"hf-credentials": {"HF_TOKEN": "HF_TOKEN"}},
        description="More Kubernetes secrets as every step's environment: secret name → {key: env var}; each "
                    "optional (a missing secret sets nothing). Default: HF_TOKEN from `hf-credentials` (the hub "
                    "token transformers reads). Add e.g. {judge-credentials: {api-key: JUDGE_API_KEY}} for "
                    "evaluation.judge_model's endpoint.")
    source: str = Field("", exclude=True)

    # --- derived ---

    @property
    def shared(self) -> dict[str, Any]:
        """The top-level LLaMA-Factory keys every stage starts from."""
        return dict(self.model_extra or {})

    def stages_to_run(self) -> tuple[str, ...]:
        """The stages a run with the configured `alignment` executes."""
        if self.pipeline == "full":
            return ("sft",) + (() if self.alignment == "none" else
                               ("rm", "ppo") if self.alignment == "ppo" else (self.alignment,))
        if self.pipeline in ("dpo", "kto"):
            # sft first when configured; an rm section trains a reward model beside them, which scores both
            # sides' answers in the evaluate step (the reward gap and its promotion gate)
            return (*(("sft",) if "sft" in self.stages else ()), *(("rm",) if "rm" in self.stages else ()),
                    self.pipeline)
        return PIPELINE_STAGES[self.pipeline]

    def stages_to_validate(self) -> tuple[str, ...]:
        """Every stage a run may execute: for `full`, each configured branch (the branch is a run parameter)."""
        if self.pipeline != "full":
            return self.stages_to_run()
        return tuple(dict.fromkeys((*self.stages_to_run(), *(s for s in PIPELINE_STAGES["full"] if s in self.stages))))

    def pipeline_inputs(self, stage: str) -> dict[str, Any]:
        """Keys an earlier step provides at run time, as placeholders that validation accepts."""
        keys: dict[str, Any] = {}
        if stage == "ppo" and self.pipeline in ("rlhf", "full"):
            keys["reward_model"] = f"{PIPELINE_INPUT}rm"
        return {**keys, **self.reference_after_sft(stage, f"{PIPELINE_INPUT}sft")}

    def reference_after_sft(self, stage: str, sft_adapter: str) -> dict[str, Any]:
        """The reference of a ppo, dpo or kto step that continues this run's SFT adapter: the SFT model itself.

        Alignment after SFT stays near the model it starts from: PPO's KL penalty is taken against the SFT
        model (InstructGPT's recipe), and DPO's and KTO's implicit reward is the policy's log-ratio to it
        (the DPO paper's π_ref = π_SFT). Continuing the adapter alone, the reference would be the base without
        it (LLaMA-Factory's default for a continued LoRA adapter): PPO's penalty would pull the policy back
        from everything SFT taught, and DPO would start far from its reference (its loss well below ln 2,
        the preference signal mixed with SFT's own shift). So the step gets `ref_model` = the base and
        `ref_model_adapters` = the SFT adapter, unless the config names its own `ref_model`. Returns {} for
        every other step, and for dpo's reference-free losses (orpo, simpo).
        """
        if stage not in ("ppo", "dpo", "kto") or "sft" not in self.stages_to_run():
            return {}
        # the step's keys as the loader reads them (model_name → model_name_or_path, qlora → 4 bits, ...)
        keys = canonical_keys({**self.shared, **self.stages.get(stage, {})})  # type: ignore[call-overload]
        if stage == "dpo" and keys.get("pref_loss") in REFERENCE_FREE_LOSSES:
            return {}
        if keys.get("ref_model") or not keys.get("model_name_or_path"):
            return {}  # the config's own reference; or no base model, which the step's own validation names
        reference = {"ref_model": keys["model_name_or_path"], "ref_model_adapters": sft_adapter}
        if keys.get("quantization_bit") in (4, 8):  # the reference is loaded as the policy's base is: quantised too
            reference["ref_model_quantization_bit"] = keys["quantization_bit"]
        return reference

    def stage_config(self, stage: str, _evaluation: dict[str, Any] | None = None, **extra: Any) -> RunConfig:
        """The validated RunConfig of one stage: shared keys, then `stages[stage]`, then `extra`."""
        raw: dict[str, tuple[Any, str]] = {}
        origin = self.source or "pipeline config"
        for key, value in self.shared.items():
            raw[key] = (value, origin)
        raw["stage"] = ("pt" if stage == "pt" else stage, origin)
        for key, value in self.stages.get(stage, {}).items():  # type: ignore[call-overload]
            raw[key] = (value, f"{origin} stages.{stage}")
        for key, value in (_evaluation or {}).items():
            raw[key] = (value, f"{origin} evaluation")
        for key, value in extra.items():
            raw[key] = (value, "pipeline")
        return validate_raw(raw, origin)

    def eval_config(self, adapter_path: str | None = None, output_dir: str | None = None) -> RunConfig:
        """The RunConfig of the evaluate steps (evaluate, evaluate-base): sft's keys, then `evaluation`.

        Args:
            adapter_path: the trained adapter to score (None: the base, as configured).
            output_dir: where the step writes its metrics and predictions.

        The rows scored are held out: `evaluation.eval_dataset` (or its synonym `evaluation.dataset`),
        else the sft stage's `eval_dataset`, else its `val_size` share of `dataset` (the same split,
        by the same seed). A config that names none is refused here, before anything trains.
        """
        keys = dict(self.evaluation.model_extra or {})
        origin = self.source or "pipeline config"
        if "dataset" in keys:
            if "eval_dataset" in keys:
                raise ConfigError([Problem("evaluation.dataset", keys["dataset"], f"{origin} evaluation",
                                           "names the evaluation data, as evaluation.eval_dataset does: give one",
                                           "keep evaluation.eval_dataset and remove evaluation.dataset")], self.source)
            keys["eval_dataset"] = keys.pop("dataset")
        keys.pop("stage", None)
        layers = (self.shared, self.stages.get("sft", {}), keys)  # type: ignore[call-overload]
        if not any(layer.get("eval_dataset") or layer.get("val_size") for layer in layers):
            raise ConfigError([Problem("evaluation.eval_dataset", None, f"{origin} evaluation",
                                       "the evaluate step scores held-out rows, but the config names none",
                                       "set evaluation.eval_dataset (a name in dataset_info.json, or a file), "
                                       "or val_size under stages.sft")], self.source)
        extra: dict[str, Any] = {"do_train": False, "do_eval": True, "do_predict": True, "overwrite_output_dir": True}
        if adapter_path:
            extra["adapter_name_or_path"] = adapter_path
        if output_dir:
            extra["output_dir"] = output_dir
        return self.stage_config("sft", _evaluation=keys, **extra)

    def export_config(self, adapter_path: str | None, export_dir: str) -> RunConfig:
        """The RunConfig of the export step: the sft keys, the `export` section, the adapter to merge.

        The base is loaded unquantised: an adapter trained on a 4/8-bit base (QLoRA) is merged into the
        full-precision weights, so `quantization_bit` is dropped here.
        """
        keys = {k: v for k, v in self.export.items() if k != "export_dir"}
        if adapter_path:
            keys["adapter_name_or_path"] = adapter_path
        run_cfg = self.stage_config("sft", export_dir=export_dir, **keys)
        run_cfg.model.quantization_bit = None
        return run_cfg

    def step_configs(self, placeholder_outputs: bool = False) -> dict[str, Callable[[], RunConfig]]:
        """How each step of the DAG builds its RunConfig: every training stage (`stages.<stage>`), evaluate, export.

        Args:
            placeholder_outputs: give the steps output folders that stand for the ones they get at run time
                (`pipeline:<step>`, never created), as the world checks need; off, a stage keeps the config's own.
        """
        def stage(name: str) -> RunConfig:
            outputs = {"output_dir": f"{PIPELINE_INPUT}{name}", "overwrite_output_dir": True}
            return self.stage_config(name, **(outputs if placeholder_outputs else {}), **self.pipeline_inputs(name))

        steps: dict[str, Callable[[], RunConfig]] = {
            f"stages.{name}": (lambda name=name: stage(name)) for name in self.stages_to_validate()}
        steps["evaluate"] = lambda: self.eval_config(output_dir=f"{PIPELINE_INPUT}evaluate" if placeholder_outputs
                                                     else None)
        steps["export"] = lambda: self.export_config(None, export_dir=f"{PIPELINE_INPUT}export")
        return steps

    def resources_for(self, step: str) -> Resources:
        return self.resources.get(step) or self.resources.get("default") or Resources()

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=False)
        return yaml.safe_dump(data, sort_keys=False)

    def to_param(self) -> str:
        """The config as the `config` pipeline parameter: one line of JSON.

        One line because KFP copies parameter defaults into a comment header of the compiled
        YAML, and a multi-line default there breaks the file (YAML parses JSON, so steps read it).
        """
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"))

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]

    def image(self, kind: Literal["runtime", "trainer"]) -> str:
        """Image references come from one place: the config, else the package version."""
        explicit = getattr(self.images, kind)
        return explicit or f"ghcr.io/kubetune/kubetune-{kind}:{kubetune.__version__}"


def step_problems(checks: Mapping[str, Callable[[], object]]) -> list[Problem]:
    """Run each step's check; return every problem it raised, named by its step (`evaluate: max_new_tokenz`).

    A shared key at fault fails every step built from it: it is listed once. `evaluation.*` problems
    already name their section and keep their key.
    """
    problems: list[Problem] = []
    seen: set[tuple[str, str, str]] = set()
    for step, check in checks.items():
        try:
            check()
        except ConfigError as err:
            for p in err.problems:
                if (p.key, repr(p.value), p.message) in seen:
                    continue
                seen.add((p.key, repr(p.value), p.message))
                problems.append(p if p.key.startswith("evaluation.") else
                                Problem(f"{step}: {p.key}", p.value, p.origin, p.message, p.hint))
    return problems


def load_pipeline_config(path: str | Path | None = None, text: str | None = None,
                         overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Parse and validate a pipeline config — every stage it will run included — or raise ConfigError."""
    source = str(path) if path is not None else ""
    if text is not None:
        data = parse_config_text(text, source or "pipeline config")
    else:
        data = read_config_file(Path(path)) if path is not None else {}
    data = {**data, **(overrides or {})}
    problems: list[Problem] = []
    for key, value in data.items():  # overrides are not parsed text: check their shape here
        if not isinstance(key, str):
            problems.append(Problem(repr(key), value, source or "pipeline config", "a key must be a name",
                                    "write each key as a name, e.g. `lora_rank: 8`"))
        elif (bad_shape := shape_problem(key, value, source or "pipeline config")) is not None:
            problems.append(bad_shape)
    if problems:
        raise ConfigError(problems, source)
    known = set(known_keys())  # aliases and LLaMA-Factory's refused keys too: their steps say why, not "unknown"
    try:
        cfg = PipelineConfig(**data)
    except ValidationError as err:
        for item in err.errors():
            key = ".".join(shown_key(p) for p in item["loc"]) or "?"
            problems.append(Problem(key, item.get("input"), source or "pipeline config",
                                    item["msg"].replace("Input should be", "expected")))
        raise ConfigError(problems, source) from None
    cfg.source = source
    problems += pipeline_secret_problems(
        {"": cfg.shared, **{f"stages.{name}": keys for name, keys in cfg.stages.items()},
         "evaluation": dict(cfg.evaluation.model_extra or {}), "export": cfg.export,
         "mlflow": cfg.mlflow.model_dump(), "s3": cfg.s3.model_dump()}, source or "pipeline config")
    for key in cfg.shared:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, [*field_owner(), *PipelineConfig.model_fields], n=1, cutoff=0.75)
            problems.append(Problem(shown_key(key), cfg.shared[key], source, "unknown key",
                                    f"did you mean '{close[0]}'?" if close else "see `kubetune keys`"))
    # every step is built from the shared keys too: list their other problems in the same report, and an
    # unknown shared key once (above, with the pipeline's own section names among the guesses)
    problems += node_problems(cfg.resources, TRAINING_STEPS, cfg.model_cache.pvc, source or "pipeline config")
    unknown = {p.key for p in problems}
    problems += [p for p in step_problems(cfg.step_configs())
                 if not (p.message == "unknown key" and p.key.rpartition(": ")[2] in unknown)]
    if problems:
        raise ConfigError(problems, source)
    return cfg
