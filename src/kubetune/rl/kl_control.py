"""The KL penalty coefficient: fixed, or adapted towards a target KL (Ziegler et al. 2019, §2.2).

The adaptive rule is proportional control on the log of the coefficient:

    e   = clip(KL / target − 1, −0.2, 0.2)
    β  ← β · (1 + e · n / horizon)

where KL is the mean sequence KL of the last rollout batch and n its number of samples. Above the
target the penalty grows, below it shrinks; the clip keeps one noisy batch from swinging it, and the
horizon (10,000 samples, as in the paper and TRL's PPOConfig) sets how slowly it moves.
"""

from __future__ import annotations

from typing import Any

from kubetune.config import FinetuningArguments

HORIZON = 10_000


class FixedKLController:
    """A constant coefficient (`adaptive_kl: false`).

    Args:
        kl_coef: the coefficient β.
    """

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """β adapted towards `target` after each rollout batch.

    Args:
        init_kl_coef: the starting β (`kl_coef`).
        target: the sequence KL (nats) to hold (`ppo_target`, default 6).
        horizon: samples over which a constant error would change β by e (default 10,000).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int = HORIZON) -> None:
        super().__init__(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move β after a batch of `n_steps` samples whose mean sequence KL was `current_kl`."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(method: FinetuningArguments) -> FixedKLController:
    """The controller a config asks for: adaptive towards `ppo_target`, or fixed at `kl_coef`."""
    if method.adaptive_kl:
        return AdaptiveKLController(method.kl_coef, method.ppo_target)
    return FixedKLController(method.kl_coef)
