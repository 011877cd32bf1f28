"""Rules of the ppo stage: a reward source it can use, prompt data, and settings its loop honours.

`kubetune.config.rules.STAGE_RULES` runs `check` for `stage: ppo`. Reward-model folders and
Python reward files are checked when they are local paths (an `s3://` reward model is checked
when it is fetched; a `pipeline:rm` placeholder is the rm step's output, filled in at run time).
"""

from __future__ import annotations

from pathlib import Path

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig
from kubetune.rl.reward_ref import is_url, parse_api_reward

VALUE_HEAD_FILE = "value_head.safetensors"  # kubetune.model.value_head.VALUE_HEAD_FILE, without importing torch
REWARD_HINT = ("set reward_model to an rm run's output_dir (e.g. saves/smollm2-135m/lora/rm — run "
               "`kubetune train examples/rm_lora.yaml` first), or, with reward_model_type: api, to an http(s):// "
               "scoring URL or a Python reward function (rewards.py:my_func)")
UNSUPPORTED_SCHEDULERS = ("reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem of a ppo config (empty when it can run)."""
    problems: list[Problem] = []
    for rule in (reward_model, reference_keys, prompt_data, sampling, optimisation):
        problems.extend(rule(cfg))
    return problems


def reward_model(cfg: RunConfig) -> list[Problem]:
    m = cfg.method
    path, kind = m.reward_model, m.reward_model_type
    where = cfg.origin("reward_model")
    if not path:
        return [Problem("reward_model", None, where, "the ppo stage needs a reward model", REWARD_HINT)]
    if kind == "api":
        problems = []
        if m.reward_model_quantization_bit is not None:
            problems.append(Problem("reward_model_quantization_bit", m.reward_model_quantization_bit,
                                    cfg.origin("reward_model_quantization_bit"),
                                    "has no effect with reward_model_type: api (no model is loaded)", "remove it"))
        try:
            ref = parse_api_reward(path)
        except ValueError as err:
            return [*problems, Problem("reward_model", path, where, f"reward_model_type: api needs a scoring "
                                       f"endpoint or a Python function, but {err}",
                                       "e.g. http://127.0.0.1:8000/score, rewards.py:my_func or mypkg.rewards:my_func")]
        if ref.kind == "file" and not Path(ref.target).is_file():
            problems.append(Problem("reward_model", path, where, f"Python reward file {ref.target} not found",
                                    "check the path (relative paths are from the current directory)"))
        return problems
    if is_url(path):
        return [Problem("reward_model", path, where, f"a URL is not a {kind} reward model",
                        "set reward_model_type: api to score with an HTTP endpoint")]
    if m.reward_model_adapters:
        return [Problem("reward_model_adapters", m.reward_model_adapters, cfg.origin("reward_model_adapters"),
                        "not supported: an rm run's output_dir holds its adapter and value head together",
                        "remove it and point reward_model at the rm output_dir")]
    from kubetune.config.pipeline import PIPELINE_INPUT

    if path.startswith(("s3://", PIPELINE_INPUT)):  # fetched, or filled in by an earlier pipeline step
        return []
    folder = Path(path)
    if not folder.is_dir():
        return [Problem("reward_model", path, where, "no such directory", REWARD_HINT)]
    missing = [name for name in (VALUE_HEAD_FILE, "adapter_config.json" if kind == "lora" else "config.json")
               if not (folder / name).is_file()]
    if not missing:
        return []
    if kind == "full" and (folder / "adapter_config.json").is_file():
        hint = "this is a LoRA reward model: set reward_model_type: lora"
    elif kind == "lora" and (folder / "config.json").is_file() and (folder / VALUE_HEAD_FILE).is_file():
        hint = "this is a fully fine-tuned reward model: set reward_model_type: full"
    else:
        hint = "point it at the output_dir of a finished rm run (kubetune train with stage: rm)"
    return [Problem("reward_model", path, where, f"not a {kind} reward model (missing {', '.join(missing)})", hint)]


def reference_keys(cfg: RunConfig) -> list[Problem]:
    """PPO's reference is built in: a separate one would be silently ignored, so refuse it."""
    problems = []
    for key in ("ref_model", "ref_model_adapters", "ref_model_quantization_bit"):
        value = getattr(cfg.method, key)
        if value is not None:
            problems.append(Problem(key, value, cfg.origin(key),
                                    "the ppo stage chooses its own reference: the policy with its LoRA adapter "
                                    "disabled, or a frozen copy of the base for freeze/full", "remove it"))
    return problems


def prompt_data(cfg: RunConfig) -> list[Problem]:
    """PPO reads prompts from sft-format data: ranking (preference) data is for rm/dpo."""
    from kubetune.data.registry import DataError, resolve_datasets

    problems = []
    for key in ("dataset", "eval_dataset"):
        names = getattr(cfg.data, key)
        try:
            attrs = resolve_datasets(names, cfg.data.dataset_dir) if names else []
        except DataError:
            continue  # a missing dataset is reported by preflight with its own message
        ranking = [a.name for a in attrs if a.ranking]
        if ranking:
            problems.append(Problem(key, ",".join(names or []), cfg.origin(key),
                                    f"{', '.join(ranking)} is ranking (chosen/rejected) data; the ppo stage samples "
                                    "its own responses to prompts", "use sft-format data (e.g. kubi_sft)"))
    if cfg.data.packing or cfg.data.neat_packing:
        key = "packing" if cfg.data.packing else "neat_packing"
        problems.append(Problem(key, True, cfg.origin(key), "PPO prompts are generated from one at a time, "
                                "never packed", f"remove {key}"))
    return problems


def sampling(cfg: RunConfig) -> list[Problem]:
    """Rollouts must be samples from the policy: PPO's ratios and KL are computed for them."""
    g = cfg.generation
    problems = []
    if cfg.train.do_train is not False and not g.do_sample:
        problems.append(Problem("do_sample", False, cfg.origin("do_sample"),
                                "PPO learns from sampled responses; greedy decoding would give every prompt one "
                                "fixed response", "set do_sample: true (temperature, top_p, top_k shape the sampling)"))
    if g.num_beams > 1:
        problems.append(Problem("num_beams", g.num_beams, cfg.origin("num_beams"),
                                "beam search does not sample from the policy", "set num_beams: 1"))
    return problems


def optimisation(cfg: RunConfig) -> list[Problem]:
    m, t = cfg.method, cfg.train
    problems = []
    for key in ("ppo_epochs", "ppo_buffer_size"):
        if getattr(m, key) < 1:
            problems.append(Problem(key, getattr(m, key), cfg.origin(key), "must be at least 1", ""))
    if m.adaptive_kl and m.ppo_target <= 0:
        problems.append(Problem("ppo_target", m.ppo_target, cfg.origin("ppo_target"),
                                "the adaptive KL controller needs a positive target KL",
                                "set ppo_target > 0 (default 6), or adaptive_kl: false for a fixed kl_coef"))
    if t.optim not in ("adamw_torch", "adamw_torch_fused"):
        problems.append(Problem("optim", t.optim, cfg.origin("optim"), "the ppo stage optimises with AdamW",
                                "use adamw_torch (or adamw_torch_fused on a GPU)"))
    if t.fp16:
        problems.append(Problem("fp16", True, cfg.origin("fp16"),
                                "not supported by the ppo stage (it has no loss scaler)", "use bf16: true"))
    if t.lr_scheduler_type in UNSUPPORTED_SCHEDULERS:
        problems.append(Problem("lr_scheduler_type", t.lr_scheduler_type, cfg.origin("lr_scheduler_type"),
                                "not supported by the ppo stage", "use linear, cosine, constant or "
                                "constant_with_warmup"))
    return problems

