"""DeepSpeed ZeRO-2 and ZeRO-3 under the HF Trainer: a LoRA sft run of the tiny model on 2 CPU ranks (torchrun, gloo).

Each run goes through `kubetune train` as a user launches it, preflight included. The two stages
see the same batches with the same seed, so their adapters must agree: ZeRO-3's, partitioned across
the ranks while training, is gathered whole when saved.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from stage_helpers import log_lines

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "deepspeed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private kubetune cache for the module's runs (as the `cache_dir` fixture, shared by both stages' runs)."""
    from kubetune.model.embedded import embedded_model_dir

    real = embedded_model_dir()
    cache = tmp_path_factory.mktemp("kt-cache")
    (cache / "models").mkdir()
    (cache / "models" / real.name).symlink_to(real)
    return cache


def train_on_two_ranks(model_dir: Path, root: Path, cache: Path, name: str, deepspeed: str | dict) -> Path:
    """`torchrun --nproc_per_node 2 -m kubetune.cli train` a 3-step LoRA sft run; its output_dir."""
    out = root / name
    cfg = {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 16, "output_dir": str(out), "per_device_train_batch_size": 2, "learning_rate": 3e-2,
        "max_steps": 3, "logging_steps": 1, "save_steps": 3, "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False, "deepspeed": deepspeed,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "KUBETUNE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "-m", "kubetune.cli", "train", str(path)],
                         env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def zero2(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, kt_cache: Path) -> Path:
    """The ZeRO-2 run's output_dir, with our examples/deepspeed/ds_z2_config.json as it is."""
    return train_on_two_ranks(tiny_model_dir, tmp_path_factory.mktemp("zero2"), kt_cache, "run",
                              str(EXAMPLES / "ds_z2_config.json"))


def assert_trained_once_on_two_ranks(out: Path) -> dict[str, torch.Tensor]:
    lines = log_lines(out)
    assert [line["current_steps"] for line in lines] == [1, 2, 3]  # logged by rank 0 alone
    assert lines[-1]["epoch"] == pytest.approx(0.75)  # 3 steps × 2 rows × 2 ranks of 16 rows: both ranks read data
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.05
    assert sorted(p.name for p in out.glob("**/adapter_model.safetensors")) == ["adapter_model.safetensors"] * 2
    adapter = load_file(out / "adapter_model.safetensors")  # the final one; the other is checkpoint-3's
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b and all(v.numel() > 0 for v in lora_b.values()), "a ZeRO shard was saved instead of the weight"
    assert any(v.abs().sum() > 0 for v in lora_b.values()), "LoRA B must have moved from 0"
    return adapter


@pytest.mark.slow
def test_zero2_lora_sft_on_two_cpu_ranks(zero2: Path) -> None:
    assert_trained_once_on_two_ranks(zero2)
    summary = json.loads((zero2 / "run_summary.json").read_text())  # rank 0 finished the run's bookkeeping
    assert summary["distributed"] == {"world_size": 2, "nodes": 1, "ranks_per_node": 2, "strategy": "deepspeed zero-2"}


@pytest.mark.slow
def test_zero3_lora_sft_on_two_cpu_ranks_matches_zero2(zero2: Path, tiny_model_dir: Path, tmp_path: Path,
                                                      kt_cache: Path) -> None:
    settings = json.loads((EXAMPLES / "ds_z3_config.json").read_text())
    # partition even the tiny LoRA matrices (parameters under 10 × hidden_size otherwise stay whole on every rank)
    settings["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    out = train_on_two_ranks(tiny_model_dir, tmp_path, kt_cache, "zero3", settings)
    zero3 = assert_trained_once_on_two_ranks(out)
    # the fused loss would read an empty shard of the head outside the forward: the stage takes the model's own loss
    assert json.loads((out / "run_summary.json").read_text())["distributed"]["strategy"] == "deepspeed zero-3"
    reference = load_file(zero2 / "adapter_model.safetensors")
    assert zero3.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(zero3[key], reference[key], rtol=1e-3, atol=1e-5, msg=key)
