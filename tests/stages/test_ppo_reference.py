"""PPO's KL reference: `ref_model` + `ref_model_adapters` (LLaMA-Factory's keys) make it the model the policy starts
from (e.g. the SFT model), so the first rollout's KL is zero; without them a LoRA run continuing an adapter is
penalised against the base without it, as in LLaMA-Factory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from stage_helpers import log_lines
from transformers import AutoModelForCausalLM

from kubetune.config import ConfigError, load_config
from kubetune.stages import run_stage
from kubetune.validate import world_problems

REPO = Path(__file__).resolve().parents[2]
LENGTH_REWARD = "def reward_func(prompts, responses):\n    return [float(len(r)) / 10 for r in responses]\n"


@pytest.fixture(scope="module")
def start_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A LoRA adapter far from zero: the policy it gives differs from the base's."""
    path = tmp_path_factory.mktemp("start-adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=2.0)  # far from the base: a KL well above the estimate's noise
    model.save_pretrained(path)
    return path


def first_kl(model_dir: Path, adapter: Path, out: Path, tmp_path: Path, **keys) -> float:
    reward = tmp_path / "length.py"
    reward.write_text(LENGTH_REWARD)
    cfg = load_config(None, {
        "model_name_or_path": str(model_dir), "adapter_name_or_path": str(adapter), "stage": "ppo",
        "finetuning_type": "lora", "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml",
        "cutoff_len": 48, "max_samples": 8, "output_dir": str(out), "per_device_train_batch_size": 4,
        "learning_rate": 1e-3, "max_steps": 1, "logging_steps": 1, "save_steps": 10, "report_to": "none",
        "disable_tqdm": True, "gradient_checkpointing": False, "max_new_tokens": 12, "top_p": 1.0, "top_k": 0,
        # a low temperature: the sampled tokens are the policy's likeliest, so against another model the KL
        # estimate is positive and large, not a noisy sum around zero (it was −0.05 in one CI run at 1.0)
        "temperature": 0.3,
        "reward_model": str(reward), "reward_model_type": "api", **keys})
    assert world_problems(cfg, "train") == []
    run_stage(cfg)
    return log_lines(out)[0]["objective/kl"]


def test_ref_model_with_the_start_adapter_is_the_reference(tiny_model_dir: Path, start_adapter: Path,
                                                            tmp_path: Path, cache_dir: Path) -> None:
    against_start = first_kl(tiny_model_dir, start_adapter, tmp_path / "sft-ref", tmp_path,
                             ref_model=str(tiny_model_dir), ref_model_adapters=str(start_adapter))
    against_base = first_kl(tiny_model_dir, start_adapter, tmp_path / "base-ref", tmp_path)
    # the rollout is sampled before the first update: policy == reference, token by token
    assert abs(against_start) < 1e-4, against_start
    print(f"first-rollout KL: {against_start:.2e} against the start adapter, {against_base:.3f} against the base")
    assert abs(against_base) > 0.1, against_base


def test_ref_model_keys_are_checked(tiny_model_dir: Path, tmp_path: Path) -> None:
    keys = {"model_name_or_path": str(tiny_model_dir), "stage": "ppo", "finetuning_type": "lora",
            "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "output_dir": str(tmp_path),
            "reward_model": "http://127.0.0.1:9/score", "reward_model_type": "api"}
    with pytest.raises(ConfigError, match="ref_model_adapters"):  # an adapter without the model it sits on
        load_config(None, {**keys, "ref_model_adapters": str(tmp_path)})
    cfg = load_config(None, {**keys, "ref_model": str(tiny_model_dir), "ref_model_adapters": str(tmp_path / "none")})
    assert [p.key for p in world_problems(cfg, "train")] == ["ref_model_adapters"]  # not a PEFT adapter folder
