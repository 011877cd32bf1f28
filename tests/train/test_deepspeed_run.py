"""DeepSpeed ZeRO-2 and ZeRO-3 under the HF Trainer: a LoRA sft run of the tiny model on 2 CPU ranks (torchrun, gloo).

The runs go through `kubetune train` as a user launches it, preflight included (the ZeRO-3 run
through a script that also looks at the model as it was loaded). The two stages see the same
batches with the same seed, so their adapters must agree: ZeRO-3's, partitioned across the ranks
while training, is gathered whole when saved. Both write a checkpoint at step 2 of 3; a third
launch resumes ZeRO-3's and must finish where the uninterrupted run did.

One test makes the three launches and checks them in turn: pytest-xdist (`make test` runs two workers)
hands neighbouring tests to different workers, and each worker would launch a shared module fixture's
runs again.
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

# Runs `kubetune train`'s stage on this rank, recording what `load_base_model` returned before PEFT or the
# Trainer touch it: under ZeRO-3 every parameter must already be a partition (`ds_id`, an empty local tensor,
# this rank's share in `ds_tensor`), as `zero.Init` makes it while loading.
RECORD_LOADED = """
import json, os, sys
from pathlib import Path
from kubetune.config import load_config
from kubetune.model import policy
from kubetune.stages import run_stage

cfg = load_config(sys.argv[1])
load_base_model = policy.load_base_model

def load_and_record(*args, **kwargs):
    model = load_base_model(*args, **kwargs)
    params = list(model.parameters())
    record = {"parameters": len(params),
              "partitioned": sum(hasattr(p, "ds_id") and p.numel() == 0 for p in params),
              "held": sum(p.numel() for p in params),
              "share": sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor")),
              "whole": sum(getattr(p, "ds_numel", p.numel()) for p in params)}
    Path(cfg.train.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.train.output_dir) / f"loaded-rank{os.environ['RANK']}.json").write_text(json.dumps(record))
    return model

policy.load_base_model = load_and_record
run_stage(cfg)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_on_two_ranks(model_dir: Path, root: Path, cache: Path, name: str, deepspeed: str | dict, *,
                       script: Path | None = None, **keys) -> Path:
    """`torchrun --nproc_per_node 2 -m kubetune.cli train` (or of `script`) a 3-step LoRA sft run; its output_dir."""
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
    command = ["-m", "kubetune.cli", "train"] if script is None else [str(script)]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), *command, str(path)],
                         env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return out


def zero3_settings() -> dict:
    settings = json.loads((EXAMPLES / "ds_z3_config.json").read_text())
    # partition even the tiny LoRA matrices and norms (parameters under 10 × hidden_size otherwise stay whole on
    # every rank)
    settings["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return settings


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


def assert_loaded_partitioned(zero3: Path) -> None:
    """The stage builds its TrainingArguments (which hold the DeepSpeed config) before it loads the model, so
    `from_pretrained` ran under `zero.Init`: no rank ever held the whole base, each held half of it."""
    loaded = [json.loads((zero3 / f"loaded-rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in loaded:
        assert record["parameters"] > 0 and record["partitioned"] == record["parameters"], record
        assert record["held"] == 0, record
        # each rank's share is half of every parameter, rounded up to a whole element per rank
        assert record["whole"] / 2 <= record["share"] <= record["whole"] / 2 + record["parameters"], record
    assert loaded[0]["whole"] == loaded[1]["whole"] > 3_000_000  # the tiny Llama's 3.2M parameters


def assert_resumed_like(uninterrupted: Path, resumed: Path) -> None:
    """`resumed` restarted from `uninterrupted`'s checkpoint-2 (DeepSpeed's partitioned weights and optimiser
    state, the scheduler, each rank's RNG and the data position) and trained step 3 as it did."""
    lines = log_lines(resumed)
    assert [line["current_steps"] for line in lines] == [3]
    # the same loss at step 3: the weights after step 2 came back (a fresh start would score about step 1's
    # loss), and the same epoch: the data resumed at the same batch
    for key in ("loss", "grad_norm", "epoch", "lr"):
        assert lines[0][key] == pytest.approx(log_lines(uninterrupted)[2][key], rel=1e-6, abs=1e-9), key
    # the same weights after step 3: Adam's moments came back too (without them step 3 would move each
    # weight by about the learning rate, far from the uninterrupted step)
    a, b = load_file(uninterrupted / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_zero2_and_zero3_lora_sft_train_alike_zero3_loads_partitioned_and_resumes(tiny_model_dir: Path,
                                                                                  tmp_path: Path,
                                                                                  cache_dir: Path) -> None:
    # ZeRO-2, with our examples/deepspeed/ds_z2_config.json as it is
    zero2 = train_on_two_ranks(tiny_model_dir, tmp_path, cache_dir, "zero2", str(EXAMPLES / "ds_z2_config.json"))
    reference = assert_trained_once_on_two_ranks(zero2)
    summary = json.loads((zero2 / "run_summary.json").read_text())  # rank 0 finished the run's bookkeeping
    assert summary["distributed"] == {"world_size": 2, "nodes": 1, "ranks_per_node": 2, "strategy": "deepspeed zero-2"}

    # ZeRO-3, run by `RECORD_LOADED` (it writes loaded-rank{0,1}.json): the same adapter
    script = tmp_path / "record_loaded.py"
    script.write_text(RECORD_LOADED)
    zero3 = train_on_two_ranks(tiny_model_dir, tmp_path, cache_dir, "zero3", zero3_settings(), script=script)
    adapter = assert_trained_once_on_two_ranks(zero3)
    # the fused loss would read an empty shard of the head outside the forward: the stage takes the model's own loss
    assert json.loads((zero3 / "run_summary.json").read_text())["distributed"]["strategy"] == "deepspeed zero-3"
    assert adapter.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(adapter[key], reference[key], rtol=1e-3, atol=1e-5, msg=key)
    assert_loaded_partitioned(zero3)

    # a new launch resumes ZeRO-3's checkpoint-2 under ZeRO-3
    resumed = train_on_two_ranks(tiny_model_dir, tmp_path, cache_dir, "resumed", zero3_settings(),
                                 resume_from_checkpoint=str(zero3 / "checkpoint-2"))
    assert_resumed_like(zero3, resumed)
