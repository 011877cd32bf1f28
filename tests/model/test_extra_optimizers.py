"""Muon, Adam-mini and APOLLO: the optimizer built has the class and parameter groups LLaMA-Factory gives it, its
step changes the parameters, and the sft stage trains with it (the loss falls on a repeated batch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback, TrainingArguments

from kubetune.config import ConfigError, load_config
from kubetune.model.extra_optimizers import MuonWithAdamW, is_muon_parameter, muon_optimizer
from kubetune.stages import run_stage
from kubetune.validate.machine import optimizer_packages_installed

REPO = Path(__file__).resolve().parents[2]
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def _args(tmp_path: Path, **keys) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-2, weight_decay=0.1, report_to=[], **keys)


def _newton_schulz(g: torch.Tensor) -> torch.Tensor:
    """LLaMA-Factory's third_party/muon orthogonalisation, written out (quintic, 5 steps, bfloat16)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).float()


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = muon_optimizer(model, _args(tmp_path))
    assert isinstance(optimizer, MuonWithAdamW)
    muon = {id(p) for g in optimizer.inner["muon"].param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert len(names) == 2 * LINEARS_PER_LAYER and all(".layers." in n for n in names)
    others = {n for n, p in model.named_parameters() if id(p) not in muon}
    assert any("embed_tokens" in n for n in others) and any("norm" in n for n in others)
    assert optimizer.param_groups == optimizer.inner["muon"].param_groups + optimizer.inner["adamw"].param_groups

    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    q = model.model.layers[0].self_attn.q_proj.weight
    before, grad = q.detach().clone(), q.grad.clone()
    all_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    assert all(not torch.equal(p, all_before[n]) for n, p in model.named_parameters())
    # LLaMA-Factory's first Muon step: decay, then lr · 0.2·√max(rows, cols) along NS(g + 0.95·g)
    expected = before * (1 - 1e-2 * 0.1) - 1e-2 * 0.2 * max(q.shape) ** 0.5 * _newton_schulz(1.95 * grad)
    cosine = torch.nn.functional.cosine_similarity((q - before).flatten(), (expected - before).flatten(), dim=0)
    assert cosine > 0.99

    state = optimizer.state_dict()
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]
    muon_optimizer(model, _args(tmp_path)).load_state_dict(state)  # a checkpoint resumes


def test_muon_split_follows_names_and_shapes() -> None:
    weight = torch.nn.Parameter(torch.zeros(4, 4))
    assert is_muon_parameter("model.layers.0.mlp.up_proj.weight", weight)
    assert not is_muon_parameter("model.embed_tokens.weight", weight)
    assert not is_muon_parameter("lm_head.weight", weight)
    assert not is_muon_parameter("model.norm.weight", torch.nn.Parameter(torch.zeros(4)))


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.optimizer = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
        self.optimizer = getattr(optimizer, "optimizer", optimizer)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def _train(model_dir: Path, out: Path, **keys) -> Recorder:
    base = {"model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "full",
            "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
            "max_samples": 4, "per_device_train_batch_size": 4, "output_dir": str(out), "learning_rate": 1e-2,
            "max_steps": 4, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
            "gradient_checkpointing": False, "lr_scheduler_type": "constant"}
    recorder = Recorder()
    run_stage(load_config(None, {**base, **keys}), callbacks=[recorder])
    return recorder


def test_sft_trains_with_muon(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    rec = _train(tiny_model_dir, tmp_path / "muon", use_muon=True, learning_rate=2e-3)
    assert isinstance(rec.optimizer, MuonWithAdamW)
    assert rec.losses[-1] < rec.losses[0] - 0.1, rec.losses


@pytest.mark.skipif(importlib.util.find_spec("adam_mini") is None, reason="adam-mini not installed")
def test_sft_trains_with_adam_mini(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    from adam_mini import Adam_mini

    rec = _train(tiny_model_dir, tmp_path / "mini", use_adam_mini=True)
    assert isinstance(rec.optimizer, Adam_mini)
    assert rec.losses[-1] < rec.losses[0] - 0.1, rec.losses
    # Adam-mini is told the model's shape, to cut q/k into heads: one second moment per head
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert (rec.optimizer.dim, rec.optimizer.n_heads, rec.optimizer.n_kv_heads) == (
        config.hidden_size, config.num_attention_heads, config.num_key_value_heads)
    q = next(g for g in rec.optimizer.param_groups if g["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert rec.optimizer.state[q["params"][0]]["vmean"].numel() == config.num_attention_heads


@pytest.mark.skipif(importlib.util.find_spec("apollo_torch") is None, reason="apollo-torch not installed")
def test_sft_trains_with_apollo_on_every_linear(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    from apollo_torch import APOLLOAdamW

    rec = _train(tiny_model_dir, tmp_path / "apollo", use_apollo=True, apollo_rank=4, apollo_update_interval=2,
                 apollo_scale=1.0, apollo_scale_front=True)
    assert isinstance(rec.optimizer, APOLLOAdamW) and rec.optimizer.scale_front
    assert rec.losses[-1] < rec.losses[0] - 0.1, rec.losses
    groups = {g["name"]: g for g in rec.optimizer.param_groups}
    apollo = groups["apollo"]
    assert (apollo["rank"], apollo["proj"], apollo["update_proj_gap"], apollo["scale_type"]) == (4, "random", 2,
                                                                                               "channel")
    assert len(apollo["params"]) == 2 * LINEARS_PER_LAYER
    # the moments of a projected weight live in the rank-4 subspace
    for param in apollo["params"]:
        assert rec.optimizer.state[param]["exp_avg"].numel() < param.numel()


@pytest.mark.skipif(importlib.util.find_spec("apollo_torch") is None, reason="apollo-torch not installed")
def test_layerwise_apollo_gives_each_parameter_its_optimizer(tiny_model_dir: Path, tmp_path: Path,
                                                             cache_dir: Path) -> None:
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    rec = _train(tiny_model_dir, tmp_path / "apollo_lw", use_apollo=True, apollo_rank=4, apollo_target="q_proj",
                 apollo_layerwise=True, max_steps=2)
    assert isinstance(rec.optimizer, LayerWiseDummyOptimizer)
    projected = [o for o in rec.optimizer.optimizer_dict.values() if "rank" in o.param_groups[0]]
    assert len(projected) == 2  # q_proj of both layers


def _cfg(**keys):
    return load_config(None, {"model_name_or_path": "some/model", "dataset": "kubi_sft",
                              "dataset_dir": str(REPO / "data"), "finetuning_type": "full", **keys})


def _problems(**keys) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        _cfg(**keys)
    return {p.key: f"{p.message} — {p.hint}" for p in err.value.problems}


def test_optimizer_rules() -> None:
    _cfg(use_muon=True, finetuning_type="lora")  # Muon and Adam-mini also train LoRA's matrices
    _cfg(use_apollo=True, apollo_target="q_proj,v_proj", apollo_proj="svd", apollo_layerwise=True)
    assert "only one can run" in _problems(use_muon=True, use_adam_mini=True)["use_muon"]
    assert "only one can run" in _problems(use_galore=True, use_apollo=True)["use_apollo"]
    assert "full fine-tuning" in _problems(use_apollo=True, finetuning_type="lora")["use_apollo"]
    assert "LoRA+ builds its own" in _problems(use_muon=True, finetuning_type="lora",
                                               loraplus_lr_ratio=16.0)["loraplus_lr_ratio"]
    assert "sft and pt stages only" in _problems(use_muon=True, stage="dpo", dataset="kubi_pref")["use_muon"]
    assert "has no effect without use_apollo" in _problems(apollo_rank=8)["apollo_rank"]
    assert "greater than 0" in _problems(use_apollo=True, apollo_rank=0)["apollo_rank"]
    assert "AdamW only" in _problems(use_apollo=True, optim="adafactor")["optim"]
    assert "cannot accumulate" in _problems(use_apollo=True, apollo_layerwise=True,
                                            gradient_accumulation_steps=2)["apollo_layerwise"]
    assert "whole gradient matrix" in _problems(use_muon=True, fsdp="full_shard")["use_muon"]


def test_a_missing_optimizer_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(use_apollo=True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    found = {p.key: f"{p.message} — {p.hint}" for p in optimizer_packages_installed(cfg)}
    assert found == {"use_apollo": "needs the package apollo-torch, not installed here — pip install "
                                   "kubetune[apollo] (or apollo-torch), or remove use_apollo"}


@pytest.mark.slow  # three short runs: ~35 s on two shared cores
def test_a_killed_muon_run_resumes_to_the_same_weights(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """MuonWithAdamW's checkpointed state (both inner optimizers) restores: resumed = straight through."""
    from safetensors.torch import load_file
    from stage_helpers import StopAfter

    keys = {"use_muon": True, "learning_rate": 2e-3, "save_strategy": "steps", "save_steps": 2}
    _train(tiny_model_dir, tmp_path / "straight", **keys)
    with pytest.raises(KeyboardInterrupt):
        base = {"model_name_or_path": str(tiny_model_dir), "stage": "sft", "finetuning_type": "full",
                "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
                "max_samples": 4, "per_device_train_batch_size": 4, "output_dir": str(tmp_path / "resumed"),
                "max_steps": 4, "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
                "gradient_checkpointing": False, "lr_scheduler_type": "constant", **keys}
        run_stage(load_config(None, base), callbacks=[StopAfter(3)])
    _train(tiny_model_dir, tmp_path / "resumed", **keys)
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
