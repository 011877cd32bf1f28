"""The kto stage end to end on a tiny model: loss, KL estimate, per-class rewards, eval-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from stage_helpers import log_lines

from kubetune.config import load_config
from kubetune.stages import run_stage
from kubetune.stages.kto import check_class_balance

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(model_dir: Path, out: Path, **keys):
    base = {
        "model_name_or_path": str(model_dir), "stage": "kto", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_kto", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 8, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 3e-2,
        "max_steps": 8, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False,
    }
    return load_config(None, {**base, **keys})



def test_kto_trains_and_logs_kl_and_per_class_rewards(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    result = run_stage(tiny_cfg(tiny_model_dir, out, pref_beta=0.5, val_size=4, do_eval=True, plot_loss=True))
    lines = [line for line in log_lines(out) if "loss" in line]
    # step 1: policy = reference, so every log-ratio and z are 0 and each row's loss is 1 − σ(0) = 0.5
    assert lines[0]["loss"] == pytest.approx(0.5, abs=1e-6) and lines[0]["kl"] == 0.0
    assert lines[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert lines[-1]["loss"] < 0.5 - 0.02
    assert {"rewards/chosen", "rewards/rejected", "kl", "logps/chosen", "logps/rejected"} <= lines[-1].keys()
    # learning from the tags: desirable rows gain reward over undesirable ones
    assert lines[-1]["rewards/chosen"] > lines[-1]["rewards/rejected"]
    assert any(line["kl"] > 0 for line in lines)  # the KL partners drift from the reference too
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items()), "LoRA B must have moved from 0"
    assert {"eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/rejected"} <= result.metrics.keys()
    assert (out / "training_kl.png").is_file()


def test_kto_eval_only_with_an_adapter_and_predictions(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    trained = run_stage(tiny_cfg(tiny_model_dir, out, max_steps=4, val_size=4, do_eval=True))
    evaluated = run_stage(tiny_cfg(tiny_model_dir, tmp_path / "eval", val_size=4, do_train=False, do_eval=True,
                                   do_predict=True, adapter_name_or_path=str(out), max_new_tokens=4,
                                   do_sample=False))
    for key in ("eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/rejected"):
        if key in trained.metrics:
            assert evaluated.metrics[key] == pytest.approx(trained.metrics[key], abs=1e-4), key
    predictions = (tmp_path / "eval" / "generated_predictions.jsonl").read_text().splitlines()
    assert 1 <= len(predictions) <= 4  # only desirable held-out rows have a reference to compare with


def test_class_balance_ratio() -> None:
    assert check_class_balance([True, False, True, False], 1.0, 1.0) == 1.0
    assert check_class_balance([True, True, True, False], 1.0, 3.0) == 1.0
    assert check_class_balance([True, True], 1.0, 1.0) == float("inf")


# --- rules (kubetune.config.rules_kto, and the world's in kubetune.validate), checked before any work starts ---


def problems(tmp_path: Path, **keys) -> dict[str, str]:
    """{key: message} of every problem of a kto config with `keys`: load_config's, else the kto world rules'."""
    from kubetune.config.errors import ConfigError
    from kubetune.validate.rules import stage_problems

    base = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "stage": "kto", "dataset": "kubi_kto",
            "dataset_dir": str(REPO / "data"), "output_dir": str(tmp_path / "out")}
    try:
        found = stage_problems(load_config(None, {**base, **keys}))  # the config's rules, then the world's
    except ConfigError as err:
        found = err.problems
    return {p.key: f"{p.message} — {p.hint}" for p in found}


def test_rules_accept_kto_data(tmp_path: Path) -> None:
    assert problems(tmp_path) == {}
    tagged = tmp_path / "tagged.jsonl"
    tagged.write_text(json.dumps({"instruction": "hi", "output": "hello", "kto_tag": True}) + "\n")
    assert problems(tmp_path, dataset=str(tagged), kto_chosen_weight=1.2, pref_ftx=0.1) == {}


def test_rule_kto_needs_tagged_single_responses(tmp_path: Path) -> None:
    assert "ranking (chosen/rejected) data" in problems(tmp_path, dataset="kubi_pref")["dataset"]
    assert "no 'kto_tag' column" in problems(tmp_path, eval_dataset="kubi_sft")["eval_dataset"]
    untagged = tmp_path / "untagged.json"
    untagged.write_text(json.dumps([{"instruction": "hi", "output": "hello"}]))
    assert "desirable" in problems(tmp_path, dataset=str(untagged))["dataset"]


def test_rules_kto_weights_and_beta(tmp_path: Path) -> None:
    assert "0 or more" in problems(tmp_path, kto_chosen_weight=-1.0)["kto_chosen_weight"]
    assert "nothing to learn" in problems(tmp_path, kto_chosen_weight=0.0, kto_rejected_weight=0.0)[
        "kto_rejected_weight"]
    assert "positive" in problems(tmp_path, pref_beta=-0.1)["pref_beta"]


def test_rules_kto_reference_and_other_keys(tmp_path: Path) -> None:
    assert "no ref_model is set" in problems(tmp_path, ref_model_quantization_bit=4)["ref_model_quantization_bit"]
    assert "copy of itself" in problems(tmp_path, finetuning_type="freeze", do_train=False)["ref_model"]
    found = problems(tmp_path, pref_loss="orpo", simpo_gamma=1.0, neat_packing=True)
    assert "only the dpo stage" in found["pref_loss"] and "only the dpo stage" in found["simpo_gamma"]
    assert "never packed" in found["neat_packing"]


def test_example_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    monkeypatch.chdir(REPO)
    assert main(["validate", "examples/kto_lora.yaml", f"output_dir={tmp_path / 'o'}"]) == 0, capsys.readouterr().err
