"""GaLore, BAdam and the speed/memory switches on a tiny model.

Each optimizer trains a few full fine-tuning steps through the real sft stage, on one batch repeated
(so the loss is comparable from step to step), while a callback records the loss, the optimizer the
Trainer used and, for BAdam, which parameters each optimizer step changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from kubetune.config import load_config
from kubetune.model.adapters import prepare_for_training
from kubetune.model.loader import load_base_model, pick_attention
from kubetune.model.precision import upcast_layernorms
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]
RANK = 4
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


class Recorder(TrainerCallback):
    """Losses per step, the optimizer (unwrapped from accelerate), and the names each step changed."""

    def __init__(self, track_changes: bool = False) -> None:
        self.losses: list[float] = []
        self.optimizer = None
        self.changed: list[set[str]] = []
        self.track_changes = track_changes
        self._before: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
        self.optimizer = getattr(optimizer, "optimizer", optimizer)

    def on_step_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.track_changes:
            self._before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.track_changes:
            self.changed.append({n for n, p in model.named_parameters() if not torch.equal(p, self._before[n])})

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def _cfg(model_dir: Path, out: Path, **keys):  # noqa: ANN202
    base = {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "full",
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        # one batch of 4 rows, seen every step: the loss must fall from step to step
        "max_samples": 4, "per_device_train_batch_size": 4, "output_dir": str(out), "overwrite_output_dir": True,
        "learning_rate": 1e-2, "max_steps": 4, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "gradient_checkpointing": False, "lr_scheduler_type": "constant",
    }
    return load_config(None, {**base, **keys})


@pytest.fixture(scope="module")
def train(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Recorder]:
    """Run the sft stage with extra keys in a module-wide tokenised-data cache; returns the recorder."""
    from kubetune.model import embedded

    cache = tmp_path_factory.mktemp("kt-cache")
    (cache / "models").mkdir()
    real = embedded.embedded_model_dir()
    (cache / "models" / real.name).symlink_to(real)

    def run(track_changes: bool = False, **keys: object) -> Recorder:
        recorder = Recorder(track_changes)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KUBETUNE_CACHE", str(cache))
            run_stage(_cfg(tiny_model_dir, tmp_path_factory.mktemp("run"), **keys), callbacks=[recorder])
        return recorder

    return run


# --- GaLore ---


def test_galore_projects_every_linear_weight_and_the_loss_falls(train) -> None:  # noqa: ANN001
    rec = train(use_galore=True, galore_rank=RANK, galore_update_interval=2, galore_scale=1.0)
    assert rec.losses[-1] < rec.losses[0] - 0.1, rec.losses

    groups = {g["name"]: g for g in rec.optimizer.param_groups}
    galore = groups["galore"]
    assert (galore["rank"], galore["update_proj_gap"], galore["scale"], galore["proj_type"]) == (RANK, 2, 1.0, "std")
    assert len(galore["params"]) == 2 * LINEARS_PER_LAYER  # `all`: every linear of both layers, not the head
    assert all(p.ndim == 2 for p in galore["params"])
    # norms and the (tied) embedding are not projected
    assert sum(p.numel() for g in ("decay", "no_decay") for p in groups[g]["params"]) > 0
    # the Adam moments of a projected weight live in the rank-4 subspace, not at the weight's shape
    for param in galore["params"]:
        moment = rec.optimizer.state[param]["exp_avg"]
        assert RANK in moment.shape and moment.numel() < param.numel()


def test_galore_target_names_select_modules(train) -> None:  # noqa: ANN001
    rec = train(use_galore=True, galore_rank=RANK, galore_target="q_proj,mlp", max_steps=1)
    galore = next(g for g in rec.optimizer.param_groups if g["name"] == "galore")
    assert len(galore["params"]) == 2 * (1 + 3)  # q_proj and the three mlp linears of both layers


def test_layerwise_galore_steps_each_parameter_from_its_hook(train) -> None:  # noqa: ANN001
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    rec = train(use_galore=True, galore_rank=RANK, galore_layerwise=True, lr_scheduler_type="linear")
    assert isinstance(rec.optimizer, LayerWiseDummyOptimizer)
    assert rec.losses[-1] < rec.losses[0] - 0.1, rec.losses
    per_param = list(rec.optimizer.optimizer_dict.values())
    projected = [o for o in per_param if "rank" in o.param_groups[0]]
    assert len(projected) == 2 * LINEARS_PER_LAYER and len(per_param) > len(projected)
    # each parameter's optimizer follows the schedule: linear decay towards 0 over 4 steps
    assert all(o.param_groups[0]["lr"] < 1e-2 for o in per_param)


# --- BAdam ---


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def test_badam_trains_one_layer_at_a_time_and_switches(train) -> None:  # noqa: ANN001
    rec = train(track_changes=True, use_badam=True, badam_switch_interval=2, badam_switch_mode="ascending",
                max_steps=4, gradient_checkpointing=True)
    assert rec.losses[-1] < rec.losses[0] - 0.1, rec.losses
    layers_changed = [{_layer(n) for n in changed} for changed in rec.changed]
    # steps 1-2 update only layer 0, steps 3-4 only layer 1; embeddings and the final norm never change
    assert layers_changed == [{0}, {0}, {1}, {1}], layers_changed
    assert all(len(changed) == 9 for changed in rec.changed)  # 7 linears + 2 norms of the active layer


def test_badam_start_block_and_descending_order(train) -> None:  # noqa: ANN001
    rec = train(track_changes=True, use_badam=True, badam_switch_interval=1, badam_switch_mode="descending",
                badam_start_block=0, max_steps=3)
    assert [{_layer(n) for n in changed} for changed in rec.changed] == [{0}, {1}, {0}]


def test_badam_start_block_beyond_the_model_is_an_error(train) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="badam_start_block 5 is not a layer"):
        train(use_badam=True, badam_start_block=5, max_steps=1)


def test_badam_ratio_mode_updates_a_share_of_each_weight(train, tiny_model_dir: Path) -> None:  # noqa: ANN001
    rec = train(track_changes=True, use_badam=True, badam_mode="ratio", badam_update_ratio=0.25, max_steps=3)
    assert rec.losses[-1] < rec.losses[0] - 0.05, rec.losses
    assert type(rec.optimizer).__name__ == "BlockOptimizerRatio"
    # compare the trained model with the base: a quarter of each large weight moved, the embeddings did not
    trained = dict(rec.optimizer.named_parameters_list)
    base = dict(load_base_model(load_config(None, {"model_name_or_path": str(tiny_model_dir)}).model,
                                path=str(tiny_model_dir)).named_parameters())
    q = "model.layers.0.self_attn.q_proj.weight"
    moved = (trained[q] != base[q]).float().mean().item()
    assert 0.2 < moved <= 0.25 + 1e-6, moved
    assert torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


# --- speed and memory switches ---


def _tiny(tiny_model_dir: Path, dtype: torch.dtype = torch.float32, **keys: object):  # noqa: ANN202
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "finetuning_type": "full", **keys})
    return cfg, load_base_model(cfg.model, dtype=dtype, path=str(tiny_model_dir))


def test_gradient_checkpointing_is_on_by_default_for_training(tiny_model_dir: Path) -> None:
    cfg, model = _tiny(tiny_model_dir)
    assert cfg.train.gradient_checkpointing is True
    model = prepare_for_training(model, cfg.model, cfg.method, gradient_checkpointing=cfg.train.gradient_checkpointing)
    assert model.is_activation_checkpointing and model.config.use_cache is False


def test_flash_attn_auto_picks_sdpa_on_cpu_and_says_so(tiny_model_dir: Path, caplog) -> None:  # noqa: ANN001
    cfg, _ = _tiny(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="kubetune.model.loader"):
        assert pick_attention(cfg.model) == "sdpa"
    assert "flash_attn: auto → sdpa" in caplog.text
    assert pick_attention(_tiny(tiny_model_dir, flash_attn="disabled")[0].model) == "eager"
    _, model = _tiny(tiny_model_dir, flash_attn="sdpa")
    assert model.config._attn_implementation == "sdpa"


def test_upcast_layernorm_keeps_norms_in_float32_in_a_bf16_model(tiny_model_dir: Path) -> None:
    cfg, model = _tiny(tiny_model_dir, dtype=torch.bfloat16, upcast_layernorm=True, pure_bf16=True)
    reference_norm = {k: v.float().clone() for k, v in model.model.norm.state_dict().items()}
    model = prepare_for_training(model, cfg.model, cfg.method, gradient_checkpointing=False)
    norms = {n: p for n, p in model.named_parameters() if "norm" in n}
    assert len(norms) == 2 * 2 + 1 and all(p.dtype == torch.float32 for p in norms.values())
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16

    # the norm runs in float32 and hands back bf16: exactly the float32 computation, rounded once
    x = torch.randn(2, 5, 64).to(torch.bfloat16)
    out = model.model.norm(x)
    w = reference_norm["weight"]
    expected = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps)) * w
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.to(torch.bfloat16), atol=0, rtol=0)

    # and the whole bf16 model still trains through them
    logits = model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]]))
    logits.loss.backward()
    assert norms["model.norm.weight"].grad is not None and norms["model.norm.weight"].grad.dtype == torch.float32


def test_without_upcast_the_norms_stay_bf16(tiny_model_dir: Path) -> None:
    cfg, model = _tiny(tiny_model_dir, dtype=torch.bfloat16, pure_bf16=True)
    model = prepare_for_training(model, cfg.model, cfg.method, gradient_checkpointing=False)
    assert model.model.norm.weight.dtype == torch.bfloat16


def test_upcast_counts_each_norm_once(tiny_model_dir: Path) -> None:
    _, model = _tiny(tiny_model_dir, dtype=torch.bfloat16)
    assert upcast_layernorms(model) == 2 * 2 + 1


def test_galore_checkpoint_state_loads_as_the_trainer_resumes_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    from kubetune.model.memory_optimizers import galore_optimizer
    from kubetune.train.arguments import training_arguments

    cfg, model = _tiny(tiny_model_dir, use_galore=True, galore_rank=RANK, output_dir=str(tmp_path))
    optimizer = galore_optimizer(model, training_arguments(cfg, tmp_path), cfg.method)
    model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    state = torch.load(tmp_path / "optimizer.pt", weights_only=True)  # what Trainer._load_optimizer_and_scheduler does
    optimizer.load_state_dict(state)
    assert any("projector" in s for s in state["state"].values())
