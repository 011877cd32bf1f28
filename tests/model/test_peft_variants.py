"""PEFT variants on a tiny model: DoRA, rsLoRA, PiSSA (+ conversion), LoRA+, additional_target,
create_new_adapter and several adapters merged in order.

Each variant trains a few sft steps through the real stage; the logits of the trained model (taken at
the end of training) are the reference that the saved adapter, the export and the PiSSA conversion
must reproduce.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from kubetune.cli import main
from kubetune.config import load_config
from kubetune.model.adapters import load_adapter, prepare_for_training
from kubetune.model.loader import load_base_model
from kubetune.model.loraplus import loraplus_optimizer
from kubetune.stages import run_stage
from kubetune.train.arguments import training_arguments

REPO = Path(__file__).resolve().parents[2]
IDS = torch.randint(5, 200, (1, 10), generator=torch.Generator().manual_seed(1))
LR, RATIO, LR_EMB = 3e-2, 16.0, 1e-3

VARIANTS: dict[str, dict] = {
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True, "lora_alpha": 8},
    "pissa": {"pissa_init": True, "pissa_iter": 4, "pissa_convert": True},
    "loraplus": {"loraplus_lr_ratio": RATIO, "loraplus_lr_embedding": LR_EMB,
                 "lora_target": "q_proj,v_proj,embed_tokens"},
    "additional_target": {"additional_target": "model.norm"},
}


class Recorder(TrainerCallback):
    """Keeps the learning rate of each optimizer group per step and the model's logits at the end."""

    def __init__(self) -> None:
        self.lrs: list[dict[str, float]] = []
        self.logits: torch.Tensor | None = None

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
        self.lrs.append({g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)})

    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.logits = _logits(model)


def _logits(model) -> torch.Tensor:  # noqa: ANN001
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=IDS).logits.float().clone()
    model.train(was_training)
    return logits


def _cfg(model_dir: Path, out: Path, **keys):
    base = {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 8, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": LR,
        "max_steps": 4, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False,
        # float32: these tests compare numbers to tight tolerances (accumulated = one batch, reloaded =
        # trained); the default `bf16: auto` would train in bf16 autocast on a CPU with AMX
        "bf16": False, "lr_scheduler_type": "linear",
    }
    return load_config(None, {**base, **keys})


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Recorder]]:
    """Train each variant once per module (in its own tokenised-data cache) and share the result."""
    from kubetune.model import embedded

    cache = tmp_path_factory.mktemp("kt-cache")
    (cache / "models").mkdir()
    real = embedded.embedded_model_dir()
    (cache / "models" / real.name).symlink_to(real)
    runs: dict[str, tuple[Path, Recorder]] = {}

    def get(variant: str) -> tuple[Path, Recorder]:
        if variant not in runs:
            out = tmp_path_factory.mktemp(variant)
            recorder = Recorder()
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("KUBETUNE_CACHE", str(cache))
                run_stage(_cfg(tiny_model_dir, out, overwrite_output_dir=True, **VARIANTS[variant]),
                          callbacks=[recorder])
            runs[variant] = (out, recorder)
        return runs[variant]

    return get


def _base(model_dir: Path):  # noqa: ANN202
    cfg = load_config(None, {"model_name_or_path": str(model_dir)})
    return load_base_model(cfg.model, path=str(model_dir))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_reloads_and_exports_to_the_same_logits(
        variant: str, trained, tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out, rec = trained(variant)
    # PiSSA's own adapter fits only the residual base: the converted one is the one for the original base
    adapter = out / "pissa_converted" if variant == "pissa" else out
    base_logits = _logits(_base(tiny_model_dir))
    assert not torch.allclose(rec.logits, base_logits, atol=1e-3), "training must change the model"
    saved = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())

    reloaded = PeftModel.from_pretrained(_base(tiny_model_dir), str(adapter))
    torch.testing.assert_close(_logits(reloaded), rec.logits, atol=2e-5, rtol=1e-4)

    export_dir = tmp_path / "merged"
    assert main(["export", f"model_name_or_path={tiny_model_dir}", f"adapter_name_or_path={adapter}",
                 f"export_dir={export_dir}"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(export_dir)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), rec.logits, atol=1e-4, rtol=1e-4)


def test_dora_learns_magnitude_vectors(trained, tiny_model_dir: Path) -> None:  # noqa: ANN001
    out, _ = trained("dora")
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    saved = load_file(out / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    magnitude = saved[key]
    weight = _base(tiny_model_dir).model.layers[0].self_attn.q_proj.weight.detach()
    initial = torch.linalg.norm(weight, dim=1)  # DoRA starts from the row norms of W
    assert magnitude.shape == initial.shape
    assert not torch.allclose(magnitude, initial, atol=1e-4), "the magnitudes must train"
    assert sum("lora_magnitude_vector" in k for k in saved) == 2 * 7  # every linear layer of both blocks


def _lora_layers(model) -> list:  # noqa: ANN001
    return [m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling]


def test_rslora_scales_by_alpha_over_sqrt_rank(trained, tiny_model_dir: Path) -> None:  # noqa: ANN001
    for rs, expected in ((True, 8 / 4 ** 0.5), (False, 8 / 4)):
        cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "lora_rank": 4, "lora_alpha": 8,
                                 "use_rslora": rs})
        model = prepare_for_training(_base(tiny_model_dir), cfg.model, cfg.method, gradient_checkpointing=False)
        layers = _lora_layers(model)
        assert layers and all(m.scaling["default"] == pytest.approx(expected) for m in layers)
    out, _ = trained("rslora")
    reloaded = PeftModel.from_pretrained(_base(tiny_model_dir), str(out))
    assert all(m.scaling["default"] == pytest.approx(4.0) for m in _lora_layers(reloaded))


def test_loraplus_groups_get_their_learning_rates(trained, tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = _cfg(tiny_model_dir, tmp_path, use_dora=True, additional_target="model.norm", **VARIANTS["loraplus"])
    model = prepare_for_training(_base(tiny_model_dir), cfg.model, cfg.method, gradient_checkpointing=False)
    optimizer = loraplus_optimizer(model, training_arguments(cfg, tmp_path), cfg.method)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(lr_of) == {id(p) for p in trainable.values()}, "every trainable parameter in exactly one group"
    for name, param in trainable.items():
        if "lora_embedding" in name:
            expected = LR_EMB
        elif "lora_B" in name or "magnitude" in name or "norm" in name:
            expected = LR * RATIO
        else:
            expected = LR
        assert lr_of[id(param)] == pytest.approx(expected), name
    assert any("lora_embedding" in n for n in trainable) and any("lora_A" in n for n in trainable)

    # through the stage: the Trainer uses these groups, and its schedule keeps their ratios at every step
    _, rec = trained("loraplus")
    assert len(rec.lrs) == 4
    for step in rec.lrs[:-1]:  # the linear schedule reaches 0 on the last step
        assert step["lora_B"] / step["lora_A"] == pytest.approx(RATIO)
        assert step["embedding"] / step["lora_A"] == pytest.approx(LR_EMB / LR)
    assert rec.lrs[0]["lora_A"] < LR and rec.lrs[0]["lora_A"] > 0  # the schedule is applied to the groups


def test_plain_lora_keeps_the_trainers_optimizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_model_dir, tmp_path)
    model = prepare_for_training(_base(tiny_model_dir), cfg.model, cfg.method, gradient_checkpointing=False)
    assert loraplus_optimizer(model, training_arguments(cfg, tmp_path), cfg.method) is None


def test_pissa_starts_from_the_principal_directions(tiny_model_dir: Path) -> None:
    base = _base(tiny_model_dir)
    base_logits = _logits(base)
    w = base.model.layers[0].mlp.down_proj.weight.detach().clone()
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "lora_rank": 4, "pissa_init": True,
                             "pissa_iter": -1})
    model = prepare_for_training(base, cfg.model, cfg.method, gradient_checkpointing=False)
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    top = torch.linalg.svdvals(w)[:4]
    torch.testing.assert_close(torch.linalg.svdvals(delta)[:4], top, atol=1e-4, rtol=1e-4)  # BA = rank-4 SVD of W
    torch.testing.assert_close(layer.base_layer.weight + delta, w, atol=1e-5, rtol=1e-5)  # base holds the residual
    torch.testing.assert_close(_logits(model), base_logits, atol=1e-4, rtol=1e-4)  # same function at step 0


def test_pissa_convert_writes_a_plain_lora_for_the_original_base(trained, tiny_model_dir: Path) -> None:  # noqa: ANN001
    out, rec = trained("pissa")
    converted = json.loads((out / "pissa_converted" / "adapter_config.json").read_text())
    assert converted["r"] == 2 * 4 and converted["init_lora_weights"] is True
    own = json.loads((out / "adapter_config.json").read_text())
    assert own["r"] == 4 and own["init_lora_weights"] == "pissa_niter_4"  # the run's adapter keeps PiSSA form
    assert (out / "pissa_init" / "adapter_model.safetensors").is_file()
    # the unconverted adapter on the original base: PEFT redraws the fast SVD, the model comes out different
    with pytest.raises(ValueError, match="pissa_converted"):
        load_adapter(_base(tiny_model_dir), str(out), is_trainable=False)
    wrong = PeftModel.from_pretrained(_base(tiny_model_dir), str(out))
    assert not torch.allclose(_logits(wrong), rec.logits, atol=1e-3), "why the guard exists"


def test_additional_target_is_trained_and_saved_in_full(trained, tiny_model_dir: Path) -> None:  # noqa: ANN001
    out, _ = trained("additional_target")
    saved = load_file(out / "adapter_model.safetensors")
    norm = [k for k in saved if "model.norm" in k and "layernorm" not in k]
    assert norm == ["base_model.model.model.norm.weight"], sorted(saved)[:5]
    assert not torch.allclose(saved[norm[0]], _base(tiny_model_dir).model.norm.weight.detach())


def _random_adapter(model_dir: Path, path: Path, seed: int, **lora) -> Path:
    """A saved adapter with non-zero B (as if trained), made without training."""
    torch.manual_seed(seed)
    model = get_peft_model(_base(model_dir), LoraConfig(r=4, lora_alpha=8, **lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    model.save_pretrained(str(path))
    return path


def _merged_by_hand(model_dir: Path, *adapters: Path):  # noqa: ANN202
    model = _base(model_dir)
    for path in adapters:
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model


def test_adapters_are_merged_in_order(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _random_adapter(tiny_model_dir, tmp_path / "a", 1, target_modules=["q_proj", "v_proj"])
    b = _random_adapter(tiny_model_dir, tmp_path / "b", 2, target_modules=["q_proj"], use_dora=True)
    a_then_b = _logits(_merged_by_hand(tiny_model_dir, a, b))
    # DoRA renormalises against the weight it lands on, so the order of merges matters
    assert not torch.allclose(a_then_b, _logits(_merged_by_hand(tiny_model_dir, b, a)), atol=1e-4)
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": f"{a},{b}"})
    frozen = prepare_for_training(_base(tiny_model_dir), cfg.model, cfg.method, gradient_checkpointing=False,
                                  is_trainable=False)
    torch.testing.assert_close(_logits(frozen), a_then_b, atol=1e-5, rtol=1e-5)
    # training: a is merged, b keeps training
    resumed = prepare_for_training(_base(tiny_model_dir), cfg.model, cfg.method, gradient_checkpointing=False)
    torch.testing.assert_close(_logits(resumed), a_then_b, atol=1e-5, rtol=1e-5)
    trainable = [n for n, p in resumed.named_parameters() if p.requires_grad]
    assert trainable and all(".q_proj." in n for n in trainable) and any("magnitude" in n for n in trainable)


def test_create_new_adapter_stacks_a_fresh_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _random_adapter(tiny_model_dir, tmp_path / "a", 1, target_modules=["q_proj", "v_proj"])
    with_a = _logits(_merged_by_hand(tiny_model_dir, a))
    keys = {"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": str(a), "lora_rank": 2,
            "lora_target": "o_proj,up_proj", "use_rslora": True}
    cfg = load_config(None, {**keys, "create_new_adapter": True})
    model = prepare_for_training(_base(tiny_model_dir), cfg.model, cfg.method, gradient_checkpointing=False)
    torch.testing.assert_close(_logits(model), with_a, atol=1e-5, rtol=1e-5)  # a merged, new adapter a no-op
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".o_proj." in n or ".up_proj." in n for n in trainable)
    assert all(p.abs().sum() == 0 for n, p in trainable.items() if "lora_B" in n)
    assert model.peft_config["default"].r == 2 and model.peft_config["default"].use_rslora
    # without it, training continues a itself
    cfg = load_config(None, keys)
    model = prepare_for_training(_base(tiny_model_dir), cfg.model, cfg.method, gradient_checkpointing=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".q_proj." in n or ".v_proj." in n for n in trainable)


def test_dora_trains_on_a_4bit_base(tiny_model_dir: Path) -> None:
    """PEFT supports DoRA on bitsandbytes layers, so the config rules do not refuse it."""
    pytest.importorskip("bitsandbytes")
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "quantization_bit": 4, "use_dora": True,
                             "lora_rank": 4, "lora_target": "q_proj,v_proj"})
    model = prepare_for_training(load_base_model(cfg.model, path=str(tiny_model_dir)), cfg.model, cfg.method,
                                 gradient_checkpointing=False)
    assert any(m.__class__.__name__ == "Linear4bit" for m in model.modules())
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=1e-2)
    for _ in range(2):
        model(input_ids=IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
    moved = {n for n, p in params.items() if not torch.equal(before[n], p.detach())}
    assert any("magnitude" in n for n in moved) and any("lora_B" in n for n in moved)


@pytest.mark.parametrize("name", ["sft_dora", "sft_rslora", "sft_pissa", "sft_loraplus"])
def test_examples_validate(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert main(["validate", f"examples/{name}.yaml", f"output_dir={tmp_path / 'o'}"]) == 0, capsys.readouterr().err
