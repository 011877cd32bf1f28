"""A scalar head on a causal LM's hidden states: the reward model (rm) and the PPO critic.

Saved next to the adapter (or full model) as `value_head.safetensors`, so a reward model
directory is self-describing: the base reference in `adapter_config.json` (LoRA) or the full
weights, plus the head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """Linear(hidden → 1), kept in float32 whatever the backbone's dtype (rewards are small differences)."""

    def __init__(self, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(hidden_states.float())).squeeze(-1)


class ModelWithValueHead(nn.Module):
    """A causal LM (plain or PEFT-wrapped) plus a `ValueHead` on its last hidden layer.

    Args:
        model: the language model; its forward must accept `output_hidden_states=True`.
        dropout: dropout before the head (default 0).
    """

    def __init__(self, model: Any, dropout: float = 0.0) -> None:
        super().__init__()
        self.pretrained_model = model
        self.config = model.config
        self.v_head = ValueHead(model.config.hidden_size, dropout)
        device = next(model.parameters()).device
        self.v_head.to(device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (lm logits [B, T, V], values [B, T] in float32)."""
        kwargs.pop("labels", None)
        out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                                    use_cache=False, **kwargs)
        return out.logits, self.v_head(out.hidden_states[-1])

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One scalar per sequence: the value at its last non-padding token (right padding)."""
        # logits_to_keep=1: a score needs hidden states only, not vocabulary logits at every position
        _, values = self(input_ids, attention_mask, logits_to_keep=1)
        return values_at_last_token(values, attention_mask)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        self.pretrained_model.activation_checkpointing_enable(**kwargs)


def values_at_last_token(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Pick values[b, last index where attention_mask[b] == 1] for right- or left-padded batches."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    last = (positions * attention_mask.long()).argmax(dim=1)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


def save_value_head(head: ValueHead, output_dir: str | Path) -> Path:
    path = Path(output_dir) / VALUE_HEAD_FILE
    save_file({k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}, str(path))
    return path


def load_value_head(head: ValueHead, directory: str | Path) -> None:
    """Load `value_head.safetensors` from `directory` into `head` (raises FileNotFoundError with a hint)."""
    path = Path(directory) / VALUE_HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} the output_dir of an rm (reward model) run?")
    head.load_state_dict(load_file(str(path)))
