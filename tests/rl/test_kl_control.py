"""The KL controller's update rule (Ziegler et al. 2019) and its checkpoint state."""

from __future__ import annotations

import math

from kubetune.config import load_config
from kubetune.rl.kl_control import AdaptiveKLController, FixedKLController, kl_controller


def test_adaptive_coefficient_moves_proportionally_to_the_clipped_error() -> None:
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    ctl.update(6.6, n_steps=100)  # error 0.1 → β·(1 + 0.1·100/10000)
    assert math.isclose(ctl.value, 0.2 * 1.001, rel_tol=1e-12)
    ctl.update(60.0, n_steps=1000)  # error 9 clipped to 0.2 → ·1.02
    assert math.isclose(ctl.value, 0.2 * 1.001 * 1.02, rel_tol=1e-12)
    ctl.update(0.0, n_steps=5000)  # error −1 clipped to −0.2 → ·0.9
    assert math.isclose(ctl.value, 0.2 * 1.001 * 1.02 * 0.9, rel_tol=1e-12)
    before = ctl.value
    ctl.update(6.0, n_steps=10_000)  # on target: unchanged
    assert ctl.value == before


def test_fixed_coefficient_never_moves() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(1000.0, n_steps=10_000)
    assert ctl.value == 0.05


def test_state_round_trips_so_a_resumed_run_continues_the_same_sequence() -> None:
    a = AdaptiveKLController(0.2, target=6.0)
    for kl in (1.0, 9.0, 7.5):
        a.update(kl, n_steps=64)
    b = AdaptiveKLController(0.2, target=6.0)
    b.load_state_dict(a.state_dict())
    a.update(3.0, n_steps=64)
    b.update(3.0, n_steps=64)
    assert a.value == b.value


def test_config_picks_the_controller() -> None:
    base = {"model_name_or_path": "m", "stage": "sft"}
    adaptive = kl_controller(load_config(None, {**base, "kl_coef": 0.1, "ppo_target": 3.0}).method)
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.value == 0.1 and adaptive.target == 3.0
    fixed = kl_controller(load_config(None, {**base, "kl_coef": 0.3, "adaptive_kl": False}).method)
    assert type(fixed) is FixedKLController and fixed.value == 0.3
