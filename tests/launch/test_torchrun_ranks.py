"""`kubetune train` on two CPU ranks (real torchrun, gloo): the same training as one rank with twice the batch.

Each test launches `FORCE_TORCHRUN=1 NPROC_PER_NODE=2 kubetune train cfg.yaml`, LLaMA-Factory's
convention, in a subprocess, and compares it with the stage run in this process on one rank with
the per-rank batch doubled: the same samples per step, so the same global loss, the same gradient
(grad_norm) and the same weights, up to float32 reduction order. Plain SGD would be stricter about
a loss scaled by the rank count; grad_norm is compared instead, which sees any scale or any
rank training on its own gradient (the fused loss once bypassed DDP's forward and did exactly that).
Also here: dpo under DeepSpeed ZeRO-2 against the DDP run, and QLoRA (a 4-bit base) under DDP.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import launch, log_lines

from kubetune.config import load_config
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED = REPO / "examples" / "deepspeed"

# The preference stages also evaluate an odd number of held-out rows: 2 ranks × eval batch 2 leave a last
# batch that accelerate tops up with repeats, which must not count in the eval metrics.
EVAL = {"do_eval": True, "per_device_eval_batch_size": 2}
STAGES = {
    "sft": {"dataset": "kubi_sft", "max_samples": 16, "max_steps": 4},
    "dpo": {"dataset": "kubi_pref", "max_samples": 13, "val_size": 5, "max_steps": 2, **EVAL},
    "rm": {"dataset": "kubi_pref", "max_samples": 15, "val_size": 3, "max_steps": 3, **EVAL},
    "kto": {"dataset": "kubi_kto", "max_samples": 15, "val_size": 3, "max_steps": 3, **EVAL},
}


def stage_keys(model_dir: Path, out: Path, stage: str, **keys) -> dict:
    return {
        "model_name_or_path": str(model_dir), "stage": stage, "finetuning_type": "lora", "lora_rank": 4,
        "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64, "output_dir": str(out),
        "per_device_train_batch_size": 2, "learning_rate": 3e-2, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "disable_tqdm": True, "gradient_checkpointing": False, "bf16": False,
        "ddp_timeout": 120, **STAGES[stage], **keys,
    }


def assert_same_training(one: Path, two: Path, files: tuple[str, ...] = ("adapter_model.safetensors",)) -> None:
    a, b = ([line for line in log_lines(out) if "loss" in line] for out in (one, two))  # the training steps
    assert [line["current_steps"] for line in b] == [line["current_steps"] for line in a]  # each step logged once
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=0.03), (x, y)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=0.03), (x, y)
    for name in files:
        wa, wb = load_file(one / name), load_file(two / name)
        assert wa.keys() == wb.keys()
        # what training moves: LoRA's B matrices (zero at the start), the value head's weight (its bias is not trained)
        moved = [k for k in wa if "lora_B" in k or k == "summary.weight"]
        assert moved
        for key in moved:
            assert float(wa[key].norm()) > 0, f"{key} never trained"
            assert float((wa[key] - wb[key]).norm() / wa[key].norm()) < 0.05, key


def check_two_rank_run(stage: str, one: Path, two: Path, done: subprocess.CompletedProcess) -> dict:
    """What every 2-rank run must show, against the 1-rank run `one`; run_summary.json of `two`."""
    assert done.returncode == 0, done.stderr[-4000:]
    assert "launching torchrun: 2 processes × 1 node" in done.stderr
    assert f"{stage}: world size 2 (2 ranks × 1 node), strategy ddp" in done.stderr
    assert done.stdout.count('"output_dir"') == 1, done.stdout  # the result is printed by rank 0 only
    summary = json.loads((two / "run_summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "nodes": 1, "ranks_per_node": 2, "strategy": "ddp"}
    files = ("adapter_model.safetensors", "value_head.safetensors") if stage == "rm" else ("adapter_model.safetensors",)
    assert_same_training(one, two, files)
    return summary


def assert_same_held_out_metrics(one: Path, two: Path) -> dict[str, float]:
    """Our held-out metrics of run `two` equal run `one`'s; `two`'s metrics (run_summary.json).

    Ours are of all ranks' rows, each row once. Not compared: the Trainer's own eval_loss (a rank's last-batch
    mean includes the rows accelerate repeated: the Trainer drops the repeated values, not their share of the
    mean) and kto's kl (an estimate per batch, over the repeats too).
    """
    expected, measured = (json.loads((out / "run_summary.json").read_text())["metrics"] for out in (one, two))
    evaluated = sorted(k for k in expected if k.startswith("eval_") and k not in ("eval_loss", "eval_kl")
                       and not k.endswith(("_runtime", "per_second")))
    assert len(evaluated) >= 2 and sorted(k for k in measured if k in evaluated) == evaluated
    for key in evaluated:
        assert measured[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-5), key
    return measured


def one_and_two_ranks(stage: str, model_dir: Path, root: Path) -> tuple[Path, Path]:
    """A preference stage run here on 1 rank with twice the batch, and on 2 DDP ranks (checked against it)."""
    one, two = root / "one", root / "two"
    run_stage(load_config(None, stage_keys(model_dir, one, stage, per_device_train_batch_size=4,
                                           per_device_eval_batch_size=4)))
    check_two_rank_run(stage, one, two, launch(stage_keys(model_dir, two, stage), root))
    assert_same_held_out_metrics(one, two)
    return one, two


@pytest.mark.parametrize("stage", ["kto", "rm"])
def test_two_ranks_train_and_evaluate_like_one_rank_with_twice_the_batch(stage: str, tiny_model_dir: Path,
                                                                         tmp_path: Path, cache_dir: Path) -> None:
    one_and_two_ranks(stage, tiny_model_dir, tmp_path)


def test_dpo_on_two_ranks_like_one_rank_with_twice_the_batch_and_under_deepspeed_zero2_like_ddp(
        tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """One test for both comparisons, so the DDP run is launched once (pytest-xdist would hand a shared fixture's
    tests to both workers). ZeRO-2 runs our examples/deepspeed/ds_z2_config.json as it is, LoRA's reference (the
    policy with its adapter off) through the engine: the same steps, weights and held-out metrics as DDP."""
    _, ddp = one_and_two_ranks("dpo", tiny_model_dir, tmp_path)
    zero2 = tmp_path / "zero2"
    done = launch(stage_keys(tiny_model_dir, zero2, "dpo", deepspeed=str(DEEPSPEED / "ds_z2_config.json")), tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "dpo: world size 2 (2 ranks × 1 node), strategy deepspeed zero-2" in done.stderr
    assert_same_training(ddp, zero2)
    metrics = assert_same_held_out_metrics(ddp, zero2)
    assert metrics["eval_rewards/margins"] > 0  # it learnt: at the start policy and reference agree (margin 0)


DIE_ON_RANK_1 = """
import os, sys
from transformers import TrainerCallback
from kubetune.config import load_config
from kubetune.stages import run_stage

class DieOnRank1(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3 and os.environ["RANK"] == "1":
            os._exit(17)  # a pre-empted pod: no clean-up, no goodbye to the other rank

run_stage(load_config(sys.argv[1]), callbacks=[DieOnRank1()])
"""


def test_sft_on_two_ranks_equals_twice_the_batch_and_accumulation_and_resumes_after_a_killed_rank(
        tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """One 2-rank run serves three comparisons (each launch costs two ranks' imports on two cores)."""
    keys = {"save_strategy": "steps", "save_steps": 2}  # checkpoints change no number of the run
    one, accumulated, two, resumed = (tmp_path / name for name in ("one", "accumulated", "two", "resumed"))
    run_stage(load_config(None, stage_keys(tiny_model_dir, one, "sft", per_device_train_batch_size=4)))
    check_two_rank_run("sft", one, two, launch(stage_keys(tiny_model_dir, two, "sft", **keys), tmp_path))
    # like one rank accumulating two batches of the per-rank size
    run_stage(load_config(None, stage_keys(tiny_model_dir, accumulated, "sft", gradient_accumulation_steps=2)))
    assert_same_training(accumulated, two)

    # rank 1 dies after step 3: torchrun stops rank 0 (waiting in an all-reduce) instead of hanging
    script = tmp_path / "die_on_rank_1.py"
    script.write_text(DIE_ON_RANK_1)
    killed = launch(stage_keys(tiny_model_dir, resumed, "sft", **keys), tmp_path, script=script)
    assert killed.returncode != 0
    assert "exitcode  : 17" in killed.stderr, killed.stderr[-3000:]
    assert (resumed / "checkpoint-2").is_dir() and not (resumed / "adapter_model.safetensors").exists()
    # the same command, restarted, resumes on two ranks to the uninterrupted 2-rank run's weights (not to the
    # 1-rank run's: it sums in another order, and Adam turns last-bit differences of near-zero gradients into
    # visible ones)
    again = launch(stage_keys(tiny_model_dir, resumed, "sft", **keys), tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming from" in again.stderr
    a, b = load_file(two / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    assert [line["current_steps"] for line in log_lines(resumed)] == [1, 2, 3, 4]


RECORD_EVERY_RANK = """
import json, os, sys
from safetensors.torch import save_file
from transformers import TrainerCallback
from kubetune.config import load_config
from kubetune.stages import run_stage

class RecordEveryRank(TrainerCallback):
    # each rank writes its own copy of what it trained (rank 0 alone saves the adapter) and how the base layers
    # under the adapter hold their weights
    def on_train_end(self, args, state, control, model=None, **kwargs):
        rank = os.environ["RANK"]
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, os.path.join(args.output_dir, f"trained-rank{rank}.safetensors"))
        weights = [type(p).__name__ for n, p in model.named_parameters() if n.endswith("base_layer.weight")]
        with open(os.path.join(args.output_dir, f"layers-rank{rank}.json"), "w") as f:
            json.dump({kind: weights.count(kind) for kind in set(weights)}, f)

run_stage(load_config(sys.argv[1]), callbacks=[RecordEveryRank()])
"""


def test_qlora_on_two_ranks_trains_one_adapter_like_one_rank_with_twice_the_batch(
        tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """QLoRA under DDP: each rank quantises its own copy of the base to 4 bits (on its own device: `LOCAL_RANK`'s
    GPU, here the CPU); only the LoRA matrices train, so DDP all-reduces their gradients alone."""
    pytest.importorskip("bitsandbytes")
    one, two = tmp_path / "one", tmp_path / "two"
    script = tmp_path / "record_every_rank.py"
    script.write_text(RECORD_EVERY_RANK)
    # two epochs of the 16 rows: the second sees the rows the first did, so its loss is comparable (and lower)
    done = launch(stage_keys(tiny_model_dir, two, "sft", quantization_bit=4, max_steps=8), tmp_path, script=script)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((two / "run_summary.json").read_text())["distributed"]["strategy"] == "ddp"
    for rank in (0, 1):
        layers = json.loads((two / f"layers-rank{rank}.json").read_text())
        assert layers == {"Params4bit": 14}, layers  # the 7 projections of both layers the adapter wraps, in 4 bits
    ranks = [load_file(two / f"trained-rank{rank}.safetensors") for rank in (0, 1)]
    assert ranks[0] and all("lora_" in name for name in ranks[0]), sorted(ranks[0])  # the base is frozen
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:  # the same averaged gradient on both ranks, so the same Adam steps, bit for bit
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    losses = [line["loss"] for line in log_lines(two) if "loss" in line]
    assert len(losses) == 8 and sum(losses[4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    # and the same training as one rank with twice the batch (losses within 3%, LoRA B within 5%)
    run_stage(load_config(None, stage_keys(tiny_model_dir, one, "sft", quantization_bit=4, max_steps=8,
                                           per_device_train_batch_size=4)))
    assert_same_training(one, two)
