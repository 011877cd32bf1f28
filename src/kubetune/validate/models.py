"""World rules about the models a stage loads besides the base: reference models and reward models.

Local folders are checked here; an `s3://` location is checked when it is fetched, and a
`pipeline:<step>` placeholder is an earlier step's output, filled in at run time.
"""

from __future__ import annotations

from pathlib import Path

from kubetune.config.errors import Problem
from kubetune.config.pipeline import PIPELINE_INPUT
from kubetune.config.rules_dpo import uses_reference
from kubetune.config.rules_ppo import REWARD_HINT
from kubetune.config.schema import RunConfig
from kubetune.rl.reward_ref import is_url, parse_api_reward

VALUE_HEAD_FILE = "value_head.safetensors"  # kubetune.model.value_head.VALUE_HEAD_FILE, without importing torch
LOCAL_PREFIXES = ("/", "./", "../", "~")  # a model named like this is a folder, not a hub id


def is_adapter_dir(location: str) -> bool:
    """Whether `location` is a PEFT adapter folder (or an s3:// one, checked when fetched)."""
    return location.startswith("s3://") or (Path(location) / "adapter_config.json").is_file()


def special_tokens_file(cfg: RunConfig) -> list[Problem]:
    """new_special_tokens_config: an existing YAML file mapping each new token to its description."""
    from kubetune.model.special_tokens_file import special_token_descriptions

    try:
        special_token_descriptions(cfg.model)
    except ValueError as err:
        key = "new_special_tokens_config"
        return [Problem(key, cfg.model.new_special_tokens_config, cfg.origin(key),
                        str(err).removeprefix(f"{key}: "), "fix the file, or use add_special_tokens")]
    return []


def pickle_checkpoints(cfg: RunConfig) -> list[Problem]:
    """A local model folder (the base, a dpo/kto ref_model) whose weights are only a pickle needs allow_pickle."""
    from kubetune.model.pickle_files import pickle_only_weights, pickle_refusal

    if cfg.model.allow_pickle or cfg.model.gguf_file or cfg.model.train_from_scratch:
        return []
    problems = []
    for key, location in (("model_name_or_path", cfg.model.model_name_or_path), ("ref_model", cfg.method.ref_model)):
        weights = pickle_only_weights(Path(location).expanduser()) if location else None
        if weights is not None:
            problems.append(Problem(key, location, cfg.origin(key), *pickle_refusal(weights)))
    return problems


def reference_model_folders(cfg: RunConfig) -> list[Problem]:
    """dpo/kto/ppo: a local ref_model must exist, and each of its adapters must be a PEFT adapter folder."""
    m = cfg.method
    if not (m.stage == "ppo" or uses_reference(cfg)) or m.ref_model is None:
        return []  # the config rules refuse ref_model* keys where no reference is loaded
    problems = []
    if m.ref_model.startswith(LOCAL_PREFIXES) and not Path(m.ref_model).expanduser().exists():
        problems.append(Problem("ref_model", m.ref_model, cfg.origin("ref_model"), "no such directory",
                                "give a model directory, an s3:// prefix or a hub id"))
    for adapter in (m.ref_model_adapters or "").split(","):
        adapter = adapter.strip()
        if adapter and not adapter.startswith(PIPELINE_INPUT) and not is_adapter_dir(adapter):
            problems.append(Problem("ref_model_adapters", m.ref_model_adapters, cfg.origin("ref_model_adapters"),
                                    f"{adapter} is not a PEFT adapter directory (no adapter_config.json)",
                                    "point it at a trained adapter's output_dir"))
    return problems


def reward_source(cfg: RunConfig) -> list[Problem]:
    """ppo: what reward_model names must be usable as its reward_model_type says.

    api: an http(s) URL, or a Python reward function whose file exists; lora/full: an rm run's output
    folder with its value head (and adapter, for lora). A missing reward_model and keys that do not fit
    its type are the config rules' to report.
    """
    m = cfg.method
    path, kind = m.reward_model, m.reward_model_type
    where = cfg.origin("reward_model")
    if not path:
        return []
    if kind == "api":
        try:
            ref = parse_api_reward(path)
        except ValueError as err:
            return [Problem("reward_model", path, where, f"reward_model_type: api needs a scoring endpoint or a "
                            f"Python function, but {err}",
                            "e.g. http://127.0.0.1:8000/score, rewards.py:my_func or mypkg.rewards:my_func")]
        if ref.kind == "file" and not Path(ref.target).is_file():
            return [Problem("reward_model", path, where, f"Python reward file {ref.target} not found",
                            "check the path (relative paths are from the current directory)")]
        return []
    if is_url(path):
        return [Problem("reward_model", path, where, f"a URL is not a {kind} reward model",
                        "set reward_model_type: api to score with an HTTP endpoint")]
    if m.reward_model_adapters or path.startswith(("s3://", PIPELINE_INPUT)):
        return []  # adapters: refused by the config rules; s3 and placeholders: checked when they arrive
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


def trained_reward_model(cfg: RunConfig) -> list[Problem]:
    """rm with `do_train: false`: a reward model must already exist where `kubetune.stages.rm` looks for it."""
    if cfg.train.do_train is not False:
        return []
    locations = [*(cfg.model.adapter_name_or_path or []), cfg.model.model_name_or_path, cfg.train.output_dir or ""]
    if any(loc.startswith("s3://") for loc in locations):
        return []  # fetched at run time; the stage says so if no value head comes with it
    from kubetune.model.reward import find_trained_reward_model  # imports torch: only for evaluate-only configs

    if find_trained_reward_model(cfg.model, cfg.train.output_dir) is not None:
        return []
    key = "adapter_name_or_path"
    return [Problem(key, cfg.model.adapter_name_or_path, cfg.origin(key),
                    "evaluating a reward model (do_train: false) needs a trained one, but none of "
                    "adapter_name_or_path, output_dir and model_name_or_path holds value_head.safetensors",
                    "train it first (kubetune train <rm config>), or set adapter_name_or_path to an rm output_dir "
                    "(full/freeze reward models: model_name_or_path)")]
