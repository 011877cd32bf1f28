"""The sft stage trains with the loss the config asks for: DFT and ASFT change the logged loss, not only parse."""

from __future__ import annotations

from pathlib import Path

from stage_helpers import log_lines

from kubetune.config import load_config
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]


def _run(model_dir: Path, out: Path, **keys) -> list[dict]:
    base = {"model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
            "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
            "max_samples": 8, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 1e-2,
            "max_steps": 2, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
            "gradient_checkpointing": False}
    run_stage(load_config(None, {**base, **keys}))
    return log_lines(out)


def test_dft_and_asft_train_a_different_loss_than_cross_entropy(tiny_model_dir: Path, tmp_path: Path,
                                                                 cache_dir: Path) -> None:
    plain = _run(tiny_model_dir, tmp_path / "ce")
    dft = _run(tiny_model_dir, tmp_path / "dft", use_dft_loss=True)
    # a random tiny model gives each token p(y) ≈ 1/vocab, so DFT's first loss is a small fraction of CE's
    assert dft[0]["loss"] < plain[0]["loss"] / 10
    asft = _run(tiny_model_dir, tmp_path / "asft", use_asft_loss=True, asft_alpha=1.0)
    # step 1: the LoRA adapter starts at B = 0, the policy equals its reference, KL = 0: the DFT loss exactly
    assert abs(asft[0]["loss"] - dft[0]["loss"]) < 1e-4
    full = _run(tiny_model_dir, tmp_path / "asft_full", use_asft_loss=True, finetuning_type="full",
                learning_rate=1e-4)  # the reference is a frozen copy of the base
    assert len(full) == 2 and all(line["loss"] > 0 for line in full)
