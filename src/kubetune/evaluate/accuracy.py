"""`compute_accuracy`: the share of learnt tokens a causal LM predicts exactly, at evaluation.

LLaMA-Factory's meaning: each evaluated row's accuracy is the fraction of its learnt positions (label not
-100) whose argmax prediction equals the label, and `eval_accuracy` is the mean over rows. Only the argmax
ids are kept from each batch's logits (`argmax_logits`, the Trainer's `preprocess_logits_for_metrics`), so
evaluation holds one id per position instead of a vocabulary of logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


def argmax_logits(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """The most likely next token at each position, (batch, seq) — the Trainer's `preprocess_logits_for_metrics`.

    Args:
        logits: the model's logits, (batch, seq, vocab), or a tuple whose first 3-d entry they are
            (models that also return an auxiliary loss).
        labels: the batch's labels (unused; the Trainer passes them).
    """
    if isinstance(logits, (list, tuple)):
        logits = next((t for t in logits if isinstance(t, torch.Tensor) and t.dim() == 3), None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("compute_accuracy: the model's output holds no (batch, seq, vocab) logits")
    return logits.argmax(dim=-1)


class TokenAccuracy:
    """The Trainer's `compute_metrics` for `compute_accuracy`: {"accuracy": mean over rows}.

    Row i's prediction at position t is for the label at t + 1 (labels are not shifted in the data).
    Rows with no learnt token are skipped. Works with `batch_eval_metrics` too (scores accumulate until
    `compute_result`).
    """

    def __init__(self) -> None:
        self.scores: list[float] = []

    def __call__(self, eval_preds: Any, compute_result: bool = True) -> dict[str, float] | None:
        preds, labels = _numpy(eval_preds.predictions), _numpy(eval_preds.label_ids)
        for pred, label in zip(preds, labels, strict=True):
            pred, label = pred[:-1], label[1:]
            learnt = label != IGNORE_INDEX
            if learnt.any():
                self.scores.append(float(np.mean(pred[learnt] == label[learnt])))
        if not compute_result:
            return None
        result = {"accuracy": float(np.mean(self.scores)) if self.scores else float("nan")}
        self.scores = []
        return result


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
