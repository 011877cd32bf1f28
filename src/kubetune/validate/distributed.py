"""World rules about DeepSpeed and FSDP settings given as JSON files: do they exist and say something sensible?

A `deepspeed` or `fsdp_config` value is a file path or the same settings inline; either way transformers
reads it when TrainingArguments is built, deep inside the run. Reading it here first turns a traceback
on every rank into one problem that names the file, the key and the fix. "auto" values are fine:
transformers fills them in from the config (`HfTrainerDeepSpeedConfig`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.config.errors import Problem
from kubetune.config.rules_distributed import fsdp_version_fits
from kubetune.config.rules_dpo import REFERENCE_LOSSES
from kubetune.config.schema import RunConfig

ZERO_STAGES = (0, 1, 2, 3)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
EXAMPLES_HINT = "start from examples/deepspeed/ (one file per ZeRO stage, with and without offload)"


def read_json_object(key: str, path: str, where: str) -> tuple[dict[str, Any] | None, Problem | None]:
    """The JSON object in `path`, or the problem that stops it being read.

    Args:
        key: the config key that names the file (its problems name it).
        path: the file, relative to the current directory (as transformers opens it).
        where: the key's origin.

    Returns:
        (the object, None), or (None, the problem).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        return None, Problem(key, path, where, "no such file",
                             "check the path (relative paths are from the current directory), or give the "
                             "settings inline as a mapping")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, Problem(key, path, where, f"{path} is not valid JSON ({err})", "fix the file")
    if not isinstance(data, dict):
        return None, Problem(key, path, where, f"{path} holds a JSON {type(data).__name__}, not an object",
                             "write the settings as one JSON object: {...}")
    return data, None


def deepspeed_config(cfg: RunConfig) -> list[Problem]:
    """`deepspeed` (a file or a mapping) must be a DeepSpeed config: a ZeRO stage of 0–3, offload where it exists,
    and batch sizes that agree with this config where they are numbers rather than "auto"."""
    value = cfg.train.deepspeed
    if not value:
        return []
    where = cfg.origin("deepspeed")
    if isinstance(value, str):
        ds, problem = read_json_object("deepspeed", value, where)
        if problem is not None:
            return [problem]
        assert ds is not None
        named = value
    else:
        ds, named = value, "the deepspeed mapping"

    def problem(message: str, hint: str) -> Problem:
        return Problem("deepspeed", value if isinstance(value, str) else None, where, f"{named}: {message}", hint)

    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        return [problem(f"zero_optimization is {zero!r}, not an object", f"write it as {{\"stage\": 2, ...}}; "
                        f"{EXAMPLES_HINT}")]
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        return [problem(f"zero_optimization.stage is {stage!r}; ZeRO has stages 0, 1, 2 and 3",
                        f"set zero_optimization.stage to 0, 1, 2 or 3; {EXAMPLES_HINT}")]
    problems = []
    for part in (name for name in ("offload_optimizer", "offload_param") if name in zero):
        device = zero[part].get("device", "none") if isinstance(zero[part], dict) else None
        if device not in OFFLOAD_DEVICES:
            problems.append(problem(f"zero_optimization.{part} is {zero[part]!r}; its device must be one of "
                                    f"{', '.join(OFFLOAD_DEVICES)}", 'write it as {"device": "cpu"}'))
        elif part == "offload_param" and device != "none" and stage != 3:
            problems.append(problem(f"zero_optimization.offload_param needs stage 3 (stage is {stage}): only ZeRO-3 "
                                    "partitions, and so offloads, the parameters",
                                    "set stage: 3, or keep offload_optimizer alone (ZeRO-2 offload)"))
    t = cfg.train
    for ds_key, ours in (("train_micro_batch_size_per_gpu", "per_device_train_batch_size"),
                         ("gradient_accumulation_steps", "gradient_accumulation_steps")):
        if ds.get(ds_key, "auto") not in ("auto", getattr(t, ours)):
            problems.append(problem(f"{ds_key} is {ds[ds_key]!r}, but {ours} is {getattr(t, ours)}",
                                    f'set {ds_key} to "auto" (it follows {ours}), or make them equal'))
    return problems


def fsdp_config_file(cfg: RunConfig) -> list[Problem]:
    """An `fsdp_config` file must hold a JSON object whose FSDP version fits the `fsdp` options."""
    path = cfg.train.fsdp_config
    if not isinstance(path, str) or not cfg.train.fsdp_options:
        return []  # inline settings, or no FSDP: the config rules judge them
    settings, problem = read_json_object("fsdp_config", path, cfg.origin("fsdp_config"))
    if problem is not None:
        return [problem]
    assert settings is not None
    return fsdp_version_fits(cfg, settings, path)


def sharded_parameters_limits(cfg: RunConfig) -> list[Problem]:
    """What does not run yet where ZeRO-3 or FSDP shard the parameters (or where a stage has no Trainer to shard).

    Refused before any work rather than failing (or hanging) ranks in: each names the setting that works.
    """
    from kubetune.train.strategy import params_are_sharded, strategy_name

    if not (cfg.train.deepspeed or cfg.train.fsdp_options):
        return []
    key = "deepspeed" if cfg.train.deepspeed else "fsdp"
    where, value = cfg.origin(key), cfg.to_flat()[key]
    stage, m = cfg.method.stage, cfg.method
    if stage == "ppo":
        return [Problem(key, value, where, "the ppo stage runs data parallel (DDP) only: its rollouts would "
                        "gather sharded weights at every generated token, and its loop does not drive DeepSpeed or "
                        "FSDP (see kubetune.stages.ppo)", f"remove {key} for ppo; several GPUs still train it, one "
                        "rank each")]
    try:
        sharded, name = params_are_sharded(cfg), strategy_name(cfg)
    except (OSError, ValueError):  # an unreadable file: deepspeed_config / fsdp_config_file name the problem
        return []
    if not sharded:
        return []
    problems = []
    if stage == "rm":
        problems.append(Problem(key, value, where, f"{name} shards the parameters, and the reward model's value "
                                "head is saved from the unsharded model (it would save empty shards)",
                                "use ZeRO-2 (examples/deepspeed/ds_z2_config.json) or plain DDP for rm"))
    separate = bool(m.ref_model) or m.finetuning_type != "lora"
    asft = stage in ("sft", "pt") and m.use_asft_loss  # ASFT's KL term runs a reference model too
    if separate and (stage == "kto" or (stage == "dpo" and m.pref_loss in REFERENCE_LOSSES) or asft):
        problems.append(Problem(key, value, where, f"{name} shards the policy, but the separate reference model "
                                f"({'ref_model' if m.ref_model else 'a frozen copy for ' + m.finetuning_type}) is "
                                "not set up for sharded inference (it would run on partitions it never gathers)",
                                "use LoRA (the reference is the policy with its adapter off), ZeRO-2, or a "
                                "reference-free pref_loss (orpo, simpo)"))
    if cfg.model.resize_vocab:
        # a partitioned embedding's local tensor is empty: its size and new rows are only seen when gathered
        problems.append(Problem("resize_vocab", True, cfg.origin("resize_vocab"), f"{name} shards the embeddings, "
                                "and kubetune resizes and initialises new tokens' rows on the unsharded model only",
                                "add the tokens in a run without sharding (ZeRO-2 or DDP) and train on from its "
                                "output, or use ZeRO-2"))
    if cfg.train.do_predict and stage in ("sft", "pt", "dpo", "kto"):
        problems.append(Problem("do_predict", True, cfg.origin("do_predict"), f"generation runs on rank 0 alone, "
                                f"and {name} needs every rank for each forward of a sharded model",
                                f"predict in a separate `kubetune eval` without {key}, or use ZeRO-2"))
    return problems
