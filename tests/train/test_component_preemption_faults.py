"""A pre-empted training step of a pipeline: the KFP component's own process sent a real SIGTERM mid-run.

On a cluster a step's pod runs `python -m kfp.dsl.executor_main --component_module_path <train.py>
--function_to_execute sft --executor_input <json>`; a pre-empted pod gets SIGTERM, and KFP's retry runs
that same command again in a new pod that mounts the same work directory (the model-cache volume). Here the
test runs that very command in a subprocess (the component's file from this checkout, the executor input
built as the KFP driver builds it), SIGTERMs it after step 2, and runs it again. The step must exit with
`PREEMPTED_EXIT_CODE` (75, not 1) and a message saying it was pre-empted; the retry must resume from the
checkpoint and end at the weights of a run never interrupted (float32 on one CPU: atol 1e-6).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from stage_helpers import log_lines, wait_for_step

from kubetune.components import runtime
from kubetune.config.pipeline import load_pipeline_config
from kubetune.stages import run_stage
from kubetune.train.preemption import PREEMPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
GRACE = 30
RUN_ID = "run-preempted"


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (from /proc: children's parent ids)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def pipeline_config(model_dir: Path, grace: int = GRACE) -> str:
    """The pipeline config parameter: 10 sft steps, no periodic checkpoint (the pre-emption's is the only one)."""
    data = {
        "name": "tiny", "model_name_or_path": str(model_dir), "lora_rank": 4, "template": "chatml",
        "dataset_dir": str(REPO / "data"), "cutoff_len": 64, "max_samples": 16, "disable_tqdm": True,
        "stages": {"sft": {"dataset": "kubi_sft", "learning_rate": 3e-2, "max_steps": 10, "save_steps": 1000,
                           "logging_steps": 1, "per_device_train_batch_size": 2, "bf16": False,
                           "gradient_checkpointing": False, "save_on_sigterm_grace": grace}},
        "evaluation": {"eval_dataset": "kubi_sft_eval"},
    }
    return load_pipeline_config(text=yaml.safe_dump(data)).to_param()


def artifact(name: str, schema: str, uri: Path) -> dict:
    return {"artifacts": [{"name": name, "type": {"schemaTitle": schema}, "uri": str(uri), "metadata": {}}]}


def executor_input(config: str, dataset: Path, adapter: Path, metrics: Path, output_file: Path,
                   run_id: str = RUN_ID) -> str:
    """The `--executor_input` the KFP driver gives the sft step (local paths as the artifacts' URIs)."""
    return json.dumps({
        "inputs": {"parameterValues": {"config": config, "run_id": run_id, "mlflow_run_id": "",
                                       "learning_rate": 0.0, "num_train_epochs": 0.0, "max_steps": 0},
                   "artifacts": {"dataset": artifact("dataset", "system.Dataset", dataset)}},
        "outputs": {"artifacts": {"adapter": artifact("adapter", "system.Model", adapter),
                                  "metrics": artifact("metrics", "system.Metrics", metrics)},
                    "outputFile": str(output_file)},
    })


def start_step(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)


@pytest.mark.chaos
@pytest.mark.slow  # two component processes start (torch, transformers, kfp) and train 10 steps: 55-80 s here
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_pre_empted_component_step_exits_75_and_its_retry_resumes(chaos_row, ranks: int, tiny_model_dir: Path,
                                                                    tmp_path: Path, cache_dir: Path) -> None:
    """ranks 2: the step's pod sees two devices (FORCE_TORCHRUN, two CPU ranks): torchrun gets the grace."""
    row = chaos_row(f"KFP training step ({ranks} rank{'s' if ranks > 1 else ''}) SIGTERM mid-step, retried")
    grace = GRACE if ranks == 1 else 40  # not torchrun's default 30: it must come from the config
    config = pipeline_config(tiny_model_dir, grace)
    dataset, adapter, metrics = tmp_path / "dataset", tmp_path / "adapter", tmp_path / "metrics"
    runtime.preprocess(config, "sft", str(dataset))
    work_root = tmp_path / "work"
    env = {**os.environ, "KUBETUNE_WORK_DIR": str(work_root)}
    env.pop("FORCE_TORCHRUN", None)
    if ranks > 1:
        env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(ranks), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "kfp.dsl.executor_main", "--component_module_path",
               str(REPO / "components/train.py"), "--function_to_execute", "sft", "--executor_input"]
    argv = [*command, executor_input(config, dataset, adapter, metrics, tmp_path / "executor_output.json")]
    work = work_root / RUN_ID / "sft"

    row.runs += 1
    proc = start_step(argv, env, tmp_path / "first.log")
    wait_for_step(proc, work, 2)
    if ranks > 1:  # the launcher torchrun was started with the config's grace (+5 s) as its shutdown timeout
        launchers = [pid for pid in descendants(proc.pid)
                     if b"torch.distributed.run" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert [environment_of(pid).get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT") for pid in launchers] == [str(grace + 5)]
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = proc.wait(timeout=grace + 15)
    log = (tmp_path / "first.log").read_text()
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert time.monotonic() - sent < grace, log[-3000:]
    assert "kubetune sft: pre-empted (SIGTERM)" in log and "run the same command again to resume" in log
    if ranks == 1:
        assert "Traceback" not in log, log[-3000:]  # a pre-emption is a clean stop, not a crash
    checkpoints = sorted(work.glob("checkpoint-*"))
    assert len(checkpoints) == 1, checkpoints
    step = int(checkpoints[0].name.split("-")[1])
    assert not (adapter / "adapter_model.safetensors").exists()  # no output artifact from an unfinished step
    before = log_lines(work)  # steps 1..step, with the times they took: a rerun from step 0 would rewrite them

    row.runs += 1  # KFP's retry: the same command, the same run id, so the same work directory
    retry = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    after = log_lines(work)
    assert step >= 2 and after[:step] == before  # resumed after `step`: the first run's lines stand
    assert [line["current_steps"] for line in after] == list(range(1, 11))  # nothing redone or lost

    straight = tmp_path / "straight"
    if ranks == 1:  # in this process: it spares a start-up
        cfg = load_pipeline_config(text=config)
        run_stage(cfg.stage_config("sft", output_dir=str(straight), tokenized_path=str(dataset)))
    else:  # the same step on as many ranks (the batch is split over them), never interrupted
        done = subprocess.run([*command, executor_input(config, dataset, straight, tmp_path / "straight-metrics",
                                                     tmp_path / "straight.json", run_id="run-straight")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(adapter / "adapter_model.safetensors")
    mismatched = [key for key in a if not torch.allclose(a[key], b[key], rtol=0, atol=1e-6)]
    row.data_lost = len(mismatched) + len(a.keys() ^ b.keys())
    assert row.data_lost == 0, mismatched
