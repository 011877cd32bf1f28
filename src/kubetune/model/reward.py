"""A trained reward model on disk: save it, restore it in place (resume), load it alone, score with it.

The rm stage writes, and the PPO stage and `kubetune eval` read, one directory layout:

    <rm output_dir>/
      reward_model.json            what the weights sit on (see `RewardModelInfo`):
                                   {"base_model": ..., "finetuning_type": "lora" | "freeze" | "full",
                                    "reward_model_type": "lora" | "full", "base_adapters": [...], ...}
      value_head.safetensors       the scalar head: summary.weight [1, hidden], summary.bias [1], float32
      adapter_config.json          LoRA (`reward_model_type: lora`): the adapter, on `base_model`
      adapter_model.safetensors      with `base_adapters` merged into the base first (usually none)
      config.json                  freeze / full (`reward_model_type: full`): the whole causal LM,
      model.safetensors              loadable with `from_pretrained` (sharded: model-*.safetensors + index)
      tokenizer.json, ...          the tokenizer the pairs were encoded with
      checkpoint-N/                the same layout every `save_steps`, plus optimizer, scheduler, RNG and
                                   trainer state; resuming restores the weights and the head together

A reward model scores a whole sequence by the value head's output at its last non-padding token.

Typical use (PPO):

    reward = load_reward_model(cfg.method.reward_model, base_model_args=cfg.model,
                               reward_model_type=cfg.method.reward_model_type,
                               quantization_bit=cfg.method.reward_model_quantization_bit)
    scores = sequence_scores(reward, input_ids, attention_mask)   # [B] float32; = reward.score(...), faster
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

import kubetune
from kubetune.config import ModelArguments
from kubetune.model.loader import load_base_model, pad_token_id
from kubetune.model.value_head import (
    VALUE_HEAD_FILE,
    ModelWithValueHead,
    load_value_head,
    save_value_head,
    values_at_last_token,
)

logger = logging.getLogger(__name__)

REWARD_MODEL_INFO = "reward_model.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "model.safetensors"
FULL_WEIGHTS_INDEX = "model.safetensors.index.json"

RewardModelType = Literal["lora", "full"]


@dataclass
class RewardModelInfo:
    """`reward_model.json`: what a reward model's weights sit on, so it can be loaded without its config.

    Attributes:
        base_model (`str`):
            `model_name_or_path` the rm was trained from (informational: loaders take the base from their
            own `ModelArguments`, which may name the same model by another path).
        finetuning_type (`str`):
            `lora`, `freeze` or `full`.
        base_adapters (`list[str]`, *optional*, defaults to `[]`):
            Adapters merged into the base before the rm adapter was trained (LoRA with several
            `adapter_name_or_path`; the last one is the rm adapter itself).
        template (`str`, *optional*, defaults to `None`):
            The chat template the pairs were encoded with: score text formatted the same way.
        hidden_size (`int`, *optional*, defaults to `None`):
            The backbone's hidden size (the value head's input), to name a mismatched base.
        kubetune_version (`str`): the library version that wrote the directory.
    """

    base_model: str
    finetuning_type: str
    base_adapters: list[str] = field(default_factory=list)
    template: str | None = None
    hidden_size: int | None = None
    kubetune_version: str = kubetune.__version__

    @property
    def reward_model_type(self) -> RewardModelType:
        """`lora` for an adapter on a base, `full` for whole weights (freeze and full training both)."""
        return "lora" if self.finetuning_type == "lora" else "full"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / REWARD_MODEL_INFO
        path.write_text(json.dumps({**asdict(self), "reward_model_type": self.reward_model_type}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RewardModelInfo | None:
        """Read `reward_model.json` from `directory`; None if there is none."""
        path = Path(directory) / REWARD_MODEL_INFO
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def is_reward_model_dir(directory: str | Path) -> bool:
    """True if `directory` holds a value head (the output_dir, or a checkpoint, of an rm run)."""
    return (Path(directory) / VALUE_HEAD_FILE).is_file()


def reward_model_type_of(directory: str | Path) -> RewardModelType | None:
    """`lora` or `full` from the files present (reward_model.json first), None if neither kind."""
    info = RewardModelInfo.load(directory)
    if info is not None:
        return info.reward_model_type
    if (Path(directory) / "adapter_config.json").is_file():
        return "lora"
    if (Path(directory) / "config.json").is_file():
        return "full"
    return None


# --- save and restore (the rm stage's final save, its checkpoints, and resume) ---


def save_reward_model(model: ModelWithValueHead, output_dir: str | Path, info: RewardModelInfo) -> None:
    """Write the backbone (LoRA adapter, or full weights + config), the value head and reward_model.json.

    Args:
        model: the reward model; its `pretrained_model` is a `PeftModel` (LoRA) or a plain causal LM.
        output_dir: destination folder (created if missing).
        info: what the weights sit on; `hidden_size` is filled in from the model.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # PeftModel.save_pretrained writes only the adapter; a plain model writes its full weights and config
    model.pretrained_model.save_pretrained(str(out))
    save_value_head(model.v_head, out)
    info.hidden_size = model.config.hidden_size
    info.save(out)


@dataclass
class RewardModelSaver:
    """Checkpoints of a reward model in training (`kubetune.train.preference_trainer.Saver`).

    The Trainer would save a `ModelWithValueHead` as one state dict (every base weight, tied ones
    breaking safetensors); this saves the PEFT or base part the usual way plus the head and
    reward_model.json, and restores both on resume.

    Args:
        info: written as reward_model.json with every save.
    """

    info: RewardModelInfo

    def save(self, model: ModelWithValueHead, output_dir: str) -> None:
        save_reward_model(model, output_dir, self.info)

    def load(self, model: ModelWithValueHead, checkpoint_dir: str) -> None:
        logger.info("restoring the reward model (weights and value head) from %s", checkpoint_dir)
        load_reward_weights(model, checkpoint_dir)


def load_reward_weights(model: ModelWithValueHead, directory: str | Path) -> None:
    """Copy the weights saved by `save_reward_model` into an already built `model`, head included.

    Used to resume training: parameters keep their identity, so the optimizer state loaded next
    still points at them.

    Args:
        model: built the same way as the model that was saved (same base, same finetuning_type).
        directory: an rm output_dir or checkpoint-N folder.

    Raises:
        FileNotFoundError: the folder lacks the adapter / weights / value head this model needs.
        ValueError: saved keys that do not fit the model (a different base or LoRA setup).
    """
    directory = Path(directory)
    inner = model.pretrained_model
    if isinstance(inner, PeftModel):
        path = directory / ADAPTER_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} does not hold a LoRA reward model "
                                    "(was it trained with another finetuning_type?)")
        result = set_peft_model_state_dict(inner, load_file(str(path)))
        if result.unexpected_keys:
            raise ValueError(f"{path} has weights this LoRA model lacks (e.g. {result.unexpected_keys[0]}): "
                             "was it trained with another lora_target or lora_rank?")
    else:
        _load_full_weights(inner, directory)
    load_value_head(model.v_head, directory)


def _load_full_weights(model: torch.nn.Module, directory: Path) -> None:
    index = directory / FULL_WEIGHTS_INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / FULL_WEIGHTS).is_file():
        files = [FULL_WEIGHTS]
    else:
        raise FileNotFoundError(f"no {FULL_WEIGHTS} (or index) in {directory}: it does not hold a full or freeze "
                                "reward model (was it trained with finetuning_type: lora?)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{directory} has weights the model lacks (e.g. {unexpected[0]}): a different base?")
    # save_pretrained leaves out tied weights (lm_head = embed_tokens): those are restored through their twin
    loaded = {p.data_ptr() for name, p in model.state_dict().items() if name in state}
    untied = [name for name in missing if model.state_dict()[name].data_ptr() not in loaded]
    if untied:
        raise ValueError(f"{directory} lacks weights of the model (e.g. {untied[0]}): a different base?")


# --- load alone (PPO, kubetune eval) ---


def load_reward_model(
    path: str,
    *,
    base_model_args: ModelArguments,
    reward_model_type: Literal["lora", "full", "api"] = "lora",
    quantization_bit: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> ModelWithValueHead:
    """Load a trained reward model for scoring: eval mode, every parameter frozen.

    Args:
        path: for `lora`, an rm output_dir (adapter + value head) whose adapter goes on
            `base_model_args.model_name_or_path`; for `full`, a directory with full weights and a value
            head (the output_dir of a freeze or full rm run). A local path or an `s3://` prefix.
        base_model_args: the base's arguments (`cfg.model`). Its `adapter_name_or_path` (the policy's
            adapters in PPO) is not applied: the reward adapter was trained on the bare base (plus the
            `base_adapters` recorded in reward_model.json). For `full`, only its loading options are used.
        reward_model_type: `lora` or `full` (default `lora`); `api` rewards are not a local model.
        quantization_bit: load the reward backbone in 4 or 8 bits (default None: unquantised).
        dtype: weight dtype (default: `base_model_args.infer_dtype`, float32 when `auto`).
        device: move the model there (default: where `load_base_model` puts it, the CPU unless quantised).

    Returns:
        `ModelWithValueHead`; `.score(input_ids, attention_mask)` gives one float32 score per sequence.

    Raises:
        FileNotFoundError: `path` is missing or holds no value head.
        ValueError: `path` holds the other kind of reward model, or its head does not fit the base.
    """
    if reward_model_type == "api":
        raise ValueError("reward_model_type: api scores through an HTTP service, not a local model")
    local = _localize(path)
    if not is_reward_model_dir(local):
        raise FileNotFoundError(f"{path} holds no {VALUE_HEAD_FILE}: point reward_model at the output_dir of an "
                                "rm (reward model) run")
    found = reward_model_type_of(local)
    if found is not None and found != reward_model_type:
        raise ValueError(f"{path} holds a {found} reward model, but reward_model_type is {reward_model_type}: "
                         f"set reward_model_type: {found}")
    info = RewardModelInfo.load(local)
    dtype = dtype or _infer_dtype(base_model_args)
    # Initialising weights that are overwritten right away (LoRA, the head) must not move the caller's RNG stream.
    with torch.random.fork_rng(devices=_cuda_devices()):
        if reward_model_type == "lora":
            backbone = _lora_backbone(local, info, base_model_args, quantization_bit, dtype)
        else:
            args = base_model_args.model_copy(update={"model_name_or_path": str(local), "adapter_name_or_path": None,
                                                      "gguf_file": None, "quantization_bit": quantization_bit})
            backbone = load_base_model(args, dtype=dtype)
        model = ModelWithValueHead(backbone)
    try:
        load_value_head(model.v_head, local)
    except RuntimeError as err:
        trained_on = f" (reward_model.json: base {info.base_model})" if info else ""
        raise ValueError(f"the value head in {path} does not fit base {base_model_args.model_name_or_path} "
                         f"(hidden size {model.config.hidden_size}){trained_on}: use the base the reward model "
                         f"was trained on. {err}") from None
    if device is not None:
        model.to(device)
    model.requires_grad_(False)
    model.eval()
    return model


def _lora_backbone(local: Path, info: RewardModelInfo | None, base_model_args: ModelArguments,
                   quantization_bit: int | None, dtype: torch.dtype) -> Any:
    base_adapters = info.base_adapters if info else []
    if info and info.base_model != base_model_args.model_name_or_path:
        logger.warning("reward model %s was trained on %s; loading its adapter on %s", local, info.base_model,
                       base_model_args.model_name_or_path)
    if quantization_bit is not None and base_adapters:
        raise ValueError(f"reward model {local} sits on merged adapters {base_adapters}: they cannot be merged into "
                         "a quantised base; remove reward_model_quantization_bit")
    args = base_model_args.model_copy(update={"adapter_name_or_path": None, "quantization_bit": quantization_bit})
    base = load_base_model(args, dtype=dtype)
    for adapter in base_adapters:
        base = PeftModel.from_pretrained(base, str(_localize(adapter))).merge_and_unload()
    return PeftModel.from_pretrained(base, str(local), is_trainable=False)


def _localize(path: str | Path) -> Path:
    if str(path).startswith("s3://"):
        from kubetune.storage import localize

        return localize(str(path))
    local = Path(path).expanduser()
    if not local.is_dir():
        raise FileNotFoundError(f"reward model {path} does not exist: point it at the output_dir of an rm run")
    return local


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _infer_dtype(args: ModelArguments) -> torch.dtype:
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(args.infer_dtype, torch.float32)


# --- scoring ---


def sequence_scores(model: ModelWithValueHead, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One float32 reward per sequence: the value at its last non-padding token (as `model.score`).

    Asks the backbone for the last position's LM logits only (`logits_to_keep=1`) where it accepts that:
    a reward needs the hidden states, and [B, T, vocab] logits would cost as much as the rest of a small model.
    """
    _, values = model(input_ids, attention_mask, **_backbone_kwargs(model))
    return values_at_last_token(values, attention_mask)


def _backbone_kwargs(model: ModelWithValueHead) -> dict[str, Any]:
    base = getattr(model, "module", model).pretrained_model  # (DistributedDataParallel wraps it in .module)
    base = base.get_base_model() if isinstance(base, PeftModel) else base
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}


@torch.no_grad()
def score_ids(model: ModelWithValueHead, sequences: Sequence[Sequence[int]], *, pad_token_id: int,
              batch_size: int = 8) -> torch.Tensor:
    """Score token sequences (each already formatted with the chat template, prompt + response).

    Args:
        model: a reward model (`load_reward_model`).
        sequences: token ids, one list per sequence; lengths may differ.
        pad_token_id: id used for right padding (masked out; never scored).
        batch_size: sequences per forward pass (default 8).

    Returns:
        float32 tensor [len(sequences)] on the CPU: the value at each sequence's last token.
    """
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        scores.append(sequence_scores(model, input_ids.to(device), attention_mask.to(device)).float().cpu())
    return torch.cat(scores) if scores else torch.empty(0)


def score_texts(model: ModelWithValueHead, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8,
                max_length: int | None = None) -> torch.Tensor:
    """Score strings: each is tokenised as is, so it must already carry the chat template.

    Args:
        model: a reward model (`load_reward_model`).
        tokenizer: its tokenizer (saved in the rm output_dir).
        texts: formatted conversations, e.g. `tokenizer.decode(prompt_ids + response_ids)`.
        batch_size: sequences per forward pass (default 8).
        max_length: keep at most this many tokens (from the start) per text (default None: all).

    Returns:
        float32 tensor [len(texts)] on the CPU.
    """
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=max_length is not None,
                        max_length=max_length)["input_ids"]
    return score_ids(model, encoded, pad_token_id=pad_token_id(tokenizer), batch_size=batch_size)


def find_trained_reward_model(model_args: ModelArguments, output_dir: str | None, *,
                              fetch: bool = False) -> Path | None:
    """Where an evaluate-only rm run finds its reward model: the first of these that holds a value head.

    1. the last `adapter_name_or_path` (a LoRA rm output_dir: `kubetune eval rm.yaml adapter_name_or_path=...`);
    2. `output_dir` (the config's own finished rm run: `kubetune eval rm.yaml`);
    3. `model_name_or_path` (a full or freeze rm output_dir used as the model).

    Args:
        model_args: the config's model arguments.
        output_dir: the config's output_dir.
        fetch: download `s3://` locations to look into them (default False: skip them).

    Returns:
        The local directory, or None if none holds a value head.
    """
    candidates = [*(model_args.adapter_name_or_path or [])[-1:], output_dir, model_args.model_name_or_path]
    for candidate in candidates:
        if not candidate or (candidate.startswith("s3://") and not fetch):
            continue
        local = _localize(candidate) if candidate.startswith("s3://") else Path(candidate).expanduser()
        if is_reward_model_dir(local):
            return local
    return None
