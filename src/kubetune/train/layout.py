"""The batch layout and attention kernel of a stage: decided in one visible step, before its Trainer is built.

The layouts (`Layout.rows`):

- `padded`: one example per row, right-padded; an attention mask hides the padding.
- `padding-free` (sft): each batch's examples packed into as few rows as fit within its longest,
  positions restarting per example; transformers keeps them apart with a block-diagonal mask.
- `one-row`: the whole batch in a single row without padding. FlashAttention-2 reads the sequence
  boundaries from the positions of one row; kubetune's per-sequence SDPA
  (`kubetune.model.packed_attention`) runs each sequence's causal attention alone, Σnᵢ²/2 scores
  instead of a T² block mask.
- `packed` / `neat-packed` (sft, pt): rows packed at preprocessing (`packing`, `neat_packing`); with
  FlashAttention-2 neat-packed rows are concatenated into one row.
- `packed-pairs` (dpo): the chosen and rejected sequences of a batch packed into rows of
  `cutoff_len`, scored through the fused log-probs path.

`Layout.attention` names the kernel every model of the stage runs (policy, reference): as loaded
(`flash_attn` → `attn_implementation`), or `kubetune_packed_sdpa` where a packed layout makes it
the cheaper way to run sdpa. `plan_*` decide without touching a model; `apply` switches the kernels
and logs the decision in one line; `Layout.as_dict` goes into run_summary.json.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from kubetune.config import RunConfig
from kubetune.data.packing import packing_mode
from kubetune.losses.causal_lm import causal_lm_parts
from kubetune.model import packed_attention
from kubetune.train.strategy import params_are_sharded, strategy_name

logger = logging.getLogger(__name__)

FLASH = "flash_attention_2"
PER_SEQUENCE_REASON = ("sdpa runs per packed sequence (kubetune_packed_sdpa): each sequence's causal attention "
                       "alone, not a block mask over the row")


@dataclass(frozen=True)
class Layout:
    """How a stage batches its rows, and the attention kernel of each of its models.

    Attributes:
        rows: padded, padding-free, one-row, packed, neat-packed or packed-pairs (module docstring).
        attention: model role (policy, reference) → the kernel it runs.
        reason: why, in words a user can act on.
        padding_free: sft's collator packs each batch of unpacked rows.
        one_row: the collator concatenates a batch into a single row.
        pack_to: dpo's collator packs a batch's sequences into rows of this many tokens. Default None.
    """

    rows: str
    attention: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    padding_free: bool = False
    one_row: bool = False
    pack_to: int | None = None

    def describe(self) -> str:
        kernels = ", ".join(f"{role} {kernel}" for role, kernel in self.attention.items())
        return f"batch layout: {self.rows} ({self.reason}); attention: {kernels}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kernel(model: nn.Module) -> str:
    """The attention implementation a loaded model runs (`sdpa`, `eager`, `flash_attention_2`, ...)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "unknown")


def plan_padded(models: dict[str, nn.Module], reason: str) -> Layout:
    """One example per row (rm, kto, ppo): every model keeps its kernel."""
    return Layout("padded", {role: kernel(m) for role, m in models.items()}, reason)


def plan_sft(cfg: RunConfig, model: nn.Module) -> Layout:
    """sft/pt: padding-free batches unless `packing: false`, packed rows, or remote model code.

    Padding-free batches hold the same examples and learn the same tokens as padded ones, without
    computing padding. They need transformers' own model code, which turns restarting position ids
    into separate attention blocks; remote code may not. Neat-packed rows keep transformers' block
    mask: over a cutoff-long row it is cheap, and measured side by side on the bench's best run it was
    1.1-1.2× faster at 0.5 GB less peak memory than many small SDPA calls.
    """
    attn = kernel(model)
    pack, neat = packing_mode(cfg.data.packing, cfg.data.neat_packing, cfg.method.stage)
    if pack:
        if neat and attn == FLASH:
            return Layout("neat-packed", {"policy": attn}, "neat_packing: true; FlashAttention-2 reads the "
                          "sequences of one row from their positions", one_row=True)
        return Layout("neat-packed" if neat else "packed", {"policy": attn},
                      "neat_packing: true" if neat else "packing: true (examples share rows of cutoff_len)")
    if cfg.data.packing is False:
        return Layout("padded", {"policy": attn}, "packing: false")
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(inner).__module__.startswith("transformers.models."):
        return Layout("padded", {"policy": attn}, "the model's own code (trust_remote_code) may not keep packed "
                      "sequences apart")
    if attn == FLASH:
        return Layout("one-row", {"policy": attn}, "padding-free; FlashAttention-2 reads the sequences of one row "
                      "from their positions", padding_free=True, one_row=True)
    if packed_attention.can_use(model):
        return Layout("one-row", {"policy": packed_attention.NAME}, f"padding-free; {PER_SEQUENCE_REASON}",
                      padding_free=True, one_row=True)
    return Layout("padding-free", {"policy": attn}, f"examples packed within each batch's longest; {attn} with a "
                  "block-diagonal mask", padding_free=True)


def plan_pairs(cfg: RunConfig, models: dict[str, nn.Module]) -> Layout:
    """dpo: a batch's sequences packed into rows of `cutoff_len` (no padding computed), unless `packing: false`.

    Packed pairs need the fused log-probs path (`causal_lm_parts`) for every model, to map packed
    tokens back to their sequences. FlashAttention-2 on the policy, or per-sequence SDPA on every
    model, keeps sequences apart within one row, so the batch becomes a single row.
    """
    kernels = {role: kernel(m) for role, m in models.items()}
    if cfg.data.packing is False:
        return Layout("padded", kernels, "packing: false")
    if params_are_sharded(cfg):  # planned before DeepSpeed/FSDP wrap the models, so causal_lm_parts cannot see it
        return Layout("padded", kernels, f"{strategy_name(cfg)} shards the parameters: the fused log-probs, which "
                      "packed pairs need, read the output head outside the forward")
    if any(causal_lm_parts(m) is None for m in models.values()):
        return Layout("padded", kernels, "a model's logits are more than head(hidden) (soft-capping, logit scales, "
                      "a wrapped head): packed pairs need the fused log-probs path")
    if kernels.get("policy") == FLASH:
        return Layout("one-row", kernels, "FlashAttention-2 reads the sequences of one row from their positions",
                      one_row=True, pack_to=cfg.data.cutoff_len)
    if all(packed_attention.can_use(m) for m in models.values()):
        return Layout("one-row", dict.fromkeys(models, packed_attention.NAME), PER_SEQUENCE_REASON, one_row=True,
                      pack_to=cfg.data.cutoff_len)
    return Layout("packed-pairs", kernels, f"sequences packed into rows of cutoff_len {cfg.data.cutoff_len}, kept "
                  "apart by a block-diagonal mask", pack_to=cfg.data.cutoff_len)


def apply(layout: Layout, models: dict[str, nn.Module]) -> None:
    """Switch each model to the kernel the layout names (only ever sdpa → kubetune_packed_sdpa) and log the plan."""
    for role, model in models.items():
        wanted = layout.attention.get(role)
        if wanted == packed_attention.NAME and kernel(model) != wanted:
            packed_attention.switch(model)
    logger.info(layout.describe())
