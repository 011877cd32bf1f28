"""fp8: true. The linear layers LLaMA-Factory's torchao recipe converts are converted (the ends and the small ones
stay), the sft stage trains through them with torchao's emulated FP8 (the losses are FP8's: they differ from the
same run in float32 and still fall), and a machine without FP8 tensor cores stops before the model loads.

The FP8 GPU itself is what cannot run here: `KUBETUNE_FP8_EMULATE=1` runs torchao's own emulation (its FP8 casts
and scales, float matmuls), the numerics the GPU kernels compute."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from kubetune.config import ConfigError, load_config
from kubetune.model.fp8 import EMULATE_ENV, convert_linear_layers, converts_to_fp8
from kubetune.stages import run_stage

pytest.importorskip("torchao.float8")
REPO = Path(__file__).resolve().parents[2]


def test_the_hidden_linear_layers_convert_and_the_ends_and_small_matrices_stay(tiny_model_dir: Path) -> None:
    from torchao.float8.float8_linear import Float8Linear

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.model.layers[0].mlp.add_module("odd", torch.nn.Linear(64, 8))  # 8 outputs: no FP8 kernel
    model.model.layers[0].self_attn.add_module("output_gate", torch.nn.Linear(64, 64))  # "output": kept
    assert convert_linear_layers(model, emulate=True) == 2 * 7  # q k v o gate up down, both layers
    fp8 = {name for name, module in model.named_modules() if isinstance(module, Float8Linear)}
    assert "model.layers.1.self_attn.q_proj" in fp8 and "model.layers.0.mlp.down_proj" in fp8
    assert not {"lm_head", "model.layers.0.mlp.odd", "model.layers.0.self_attn.output_gate"} & fp8
    assert not converts_to_fp8(torch.nn.Embedding(32, 16), "model.embed_tokens")
    # a LoRA adapter's own matrices train in high precision, whatever their rank
    lora_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default"
    assert not converts_to_fp8(torch.nn.Linear(64, 16), lora_a)
    assert converts_to_fp8(torch.nn.Linear(64, 64), "base_model.model.model.layers.0.self_attn.q_proj.base_layer")


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.fp8_layers = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.fp8_layers = sum(type(m).__name__ == "Float8Linear" for m in model.modules())

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def _keys(model_dir: Path, out: Path, **keys) -> dict:
    return {"model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "full", "dataset": "kubi_sft",
            "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64, "max_samples": 4,
            "per_device_train_batch_size": 4, "output_dir": str(out), "learning_rate": 1e-2, "max_steps": 4,
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "bf16": False,
            "gradient_checkpointing": False, "lr_scheduler_type": "constant", **keys}


def _train(keys: dict) -> Recorder:
    recorder = Recorder()
    run_stage(load_config(None, keys), callbacks=[recorder])
    return recorder


def test_sft_trains_through_emulated_fp8_layers(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _train(_keys(tiny_model_dir, tmp_path / "plain"))
    monkeypatch.setenv(EMULATE_ENV, "1")
    fp8 = _train(_keys(tiny_model_dir, tmp_path / "fp8", fp8=True, fp8_backend="torchao"))
    assert plain.fp8_layers == 0 and fp8.fp8_layers == 2 * 7
    assert fp8.losses[-1] < fp8.losses[0] - 0.1, fp8.losses
    # FP8 rounding changes every loss a little, and not more than a little
    assert all(a != b for a, b in zip(fp8.losses, plain.losses, strict=True)), (fp8.losses, plain.losses)
    assert abs(fp8.losses[0] - plain.losses[0]) < 0.05 * plain.losses[0]


def test_without_fp8_tensor_cores_the_run_stops_before_the_model_loads(tiny_model_dir: Path, tmp_path: Path,
                                                                       cache_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMULATE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine has no GPU; say so for any
    loaded = []
    monkeypatch.setattr("kubetune.model.policy.load_base_model", lambda *a, **k: loaded.append(1))
    with pytest.raises(RuntimeError, match=r"compute capability 8\.9\+.*no CUDA GPU.*KUBETUNE_FP8_EMULATE"):
        run_stage(load_config(None, _keys(tiny_model_dir, tmp_path / "out", fp8=True)))
    assert not loaded


def _problems(**keys) -> dict[str, str]:
    base = {"model_name_or_path": "some/model", "dataset": "kubi_sft", "dataset_dir": str(REPO / "data")}
    with pytest.raises(ConfigError) as err:
        load_config(None, {**base, **keys})
    return {p.key: f"{p.message} — {p.hint}" for p in err.value.problems}


def test_fp8_rules_name_what_does_not_combine() -> None:
    assert "quantised" in _problems(fp8=True, finetuning_type="lora", quantization_bit=4)["fp8"]
    assert "Transformer Engine" in _problems(fp8=True, fp8_backend="te")["fp8_backend"]
    assert "torchao" in _problems(fp8=True, fp8_backend="msamp")["fp8_backend"]
    assert "without fp8: true" in _problems(fp8_backend="torchao")["fp8_backend"]


def test_fsdp_float8_all_gather_turns_fp8_on_as_llamafactory_does(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_config(None, {"model_name_or_path": "some/model", "dataset": "kubi_sft",
                                 "dataset_dir": str(REPO / "data"), "fp8_enable_fsdp_float8_all_gather": True})
    assert cfg.train.fp8 and "needs fp8" in caplog.text
