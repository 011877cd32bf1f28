"""DeepSpeed ZeRO-2 and ZeRO-3 under the HF Trainer: a LoRA sft run of the tiny model on 2 CPU ranks (torchrun, gloo).

Each run goes through `kubetune train` as a user launches it, preflight included. The two stages
see the same batches with the same seed, so their adapters must agree: ZeRO-3's, partitioned across
the ranks while training, is gathered whole when saved. Both write a checkpoint at step 2 of 3; a third
launch resumes ZeRO-3's and must finish where the uninterrupted run did.
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


def train_on_two_ranks(model_dir: Path, root: Path, cache: Path, name: str, deepspeed: str | dict,
                       **keys) -> Path:
    """`torchrun --nproc_per_node 2 -m kubetune.cli train` a 3-step LoRA sft run (`keys` added); its output_dir."""
    out = root / name
    cfg = {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 16, "output_dir": str(out), "per_device_train_batch_size": 2, "learning_rate": 3e-2,
        "max_steps": 3, "logging_steps": 1, "save_steps": 2, "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False, "deepspeed": deepspeed, **keys,
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


def zero3_settings() -> dict:
    settings = json.loads((EXAMPLES / "ds_z3_config.json").read_text())
    # partition even the tiny LoRA matrices and norms (parameters under 10 × hidden_size otherwise stay whole on
    # every rank)
    settings["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return settings


@pytest.fixture(scope="module")
def zero3(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, kt_cache: Path) -> Path:
    """The ZeRO-3 run's output_dir."""
    return train_on_two_ranks(tiny_model_dir, tmp_path_factory.mktemp("zero3"), kt_cache, "run", zero3_settings())


def assert_trained_once_on_two_ranks(out: Path) -> dict[str, torch.Tensor]:
    lines = log_lines(out)
    assert [line["current_steps"] for line in lines] == [1, 2, 3]  # logged by rank 0 alone
    assert lines[-1]["epoch"] == pytest.approx(0.75)  # 3 steps × 2 rows × 2 ranks of 16 rows: both ranks read data
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.05
    # the final adapter, checkpoint-2's and checkpoint-3's, each written once
    assert sorted(str(p.relative_to(out)) for p in out.glob("**/adapter_model.safetensors")) == [
        "adapter_model.safetensors", "checkpoint-2/adapter_model.safetensors", "checkpoint-3/adapter_model.safetensors"]
    adapter = load_file(out / "adapter_model.safetensors")
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
def test_zero3_lora_sft_on_two_cpu_ranks_matches_zero2(zero2: Path, zero3: Path) -> None:
    adapter = assert_trained_once_on_two_ranks(zero3)
    # the fused loss would read an empty shard of the head outside the forward: the stage takes the model's own loss
    assert json.loads((zero3 / "run_summary.json").read_text())["distributed"]["strategy"] == "deepspeed zero-3"
    reference = load_file(zero2 / "adapter_model.safetensors")
    assert adapter.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(adapter[key], reference[key], rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.slow
def test_zero3_checkpoint_resumes_under_zero3_to_the_uninterrupted_run(zero3: Path, tiny_model_dir: Path,
                                                                        tmp_path: Path, kt_cache: Path) -> None:
    """A new launch resumes from checkpoint-2 (DeepSpeed's partitioned weights and optimiser state, the scheduler,
    each rank's RNG and the data position) and trains step 3 as the uninterrupted run did."""
    resumed = train_on_two_ranks(tiny_model_dir, tmp_path, kt_cache, "resumed", zero3_settings(),
                                 resume_from_checkpoint=str(zero3 / "checkpoint-2"))
    uninterrupted, lines = log_lines(zero3), log_lines(resumed)
    assert [line["current_steps"] for line in lines] == [3]
    # the same loss at step 3: the weights after step 2 came back (a fresh start would score about step 1's
    # loss), and the same epoch: the data resumed at the same batch
    for key in ("loss", "grad_norm", "epoch", "lr"):
        assert lines[0][key] == pytest.approx(uninterrupted[2][key], rel=1e-6, abs=1e-9), key
    # the same weights after step 3: Adam's moments came back too (without them step 3 would move each
    # weight by about the learning rate, far from the uninterrupted step)
    a, b = load_file(zero3 / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
