"""A training step that sees several GPUs trains on all of them: two CPU ranks (real torchrun, gloo)
stand in for a pod's GPUs (FORCE_TORCHRUN=1 NPROC_PER_NODE=2), tracked in a real `mlflow server`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.components import runtime
from kubetune.config.pipeline import load_pipeline_config

REPO = Path(__file__).resolve().parents[2]


def tiny_sft_pipeline(model_dir: Path, max_steps: int, **sections: object) -> str:
    """The pipeline config parameter of a few sft steps on the tiny model (plus `sections`, e.g. mlflow)."""
    data = {
        "name": "tiny", "model_name_or_path": str(model_dir), "lora_rank": 4, "template": "chatml",
        "dataset_dir": str(REPO / "data"), "cutoff_len": 48, "max_samples": 16, "disable_tqdm": True,
        "stages": {"sft": {"dataset": "kubi_sft", "learning_rate": 3e-2, "max_steps": max_steps,
                           "save_strategy": "no", "logging_steps": 1, "per_device_train_batch_size": 2,
                           "bf16": False}},
        "evaluation": {"eval_dataset": "kubi_sft_eval"}, **sections,
    }
    return load_pipeline_config(text=yaml.safe_dump(data)).to_param()


def test_a_training_step_runs_one_rank_per_device_and_tracks_once(tiny_model_dir: Path, tmp_path: Path,
                                                                   cache_dir: Path, mlflow_server: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    config = tiny_sft_pipeline(tiny_model_dir, max_steps=3,
                               mlflow={"tracking_uri": mlflow_server, "experiment": "kubetune-ranks"})
    dataset, adapter = tmp_path / "dataset", tmp_path / "adapter"
    runtime.preprocess(config, "sft", str(dataset))
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment("kubetune-ranks")
    parent = client.create_run(experiment).info.run_id

    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    metrics = runtime.train(config, "sft", str(dataset), str(adapter), run_id="ranks-1", parent_run_id=parent)

    assert metrics["train_loss"] > 0  # read back from what rank 0 wrote
    summary = json.loads((adapter / "run_summary.json").read_text())
    assert summary["distributed"]["world_size"] == 2
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not list(adapter.glob("*rank_spec*")), "the ranks' launch spec is not an output"
    nested = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [run.data.tags["mlflow.runName"] for run in nested] == ["sft"]  # one run, not one per rank
    history = client.get_metric_history(nested[0].info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]  # each step logged once


def test_two_nodes_as_kubeflow_trainer_starts_them_train_one_model(tiny_model_dir: Path, tmp_path: Path,
                                                                    cache_dir: Path) -> None:
    """What each pod of a 2-node TrainJob runs (`train_ranks --node <spec>`), started here as two processes with
    the torch runtime's PET_* variables (one CPU rank per "node", gloo, 127.0.0.1 as node 0's address)."""
    import os
    import socket
    import subprocess
    import sys

    config = tiny_sft_pipeline(tiny_model_dir, max_steps=2)
    dataset, work = tmp_path / "dataset", tmp_path / "volume" / "sft"
    runtime.preprocess(config, "sft", str(dataset))
    work.mkdir(parents=True)
    spec = work.parent / ".sft.rank_spec.json"
    spec.write_text(json.dumps({"config": config, "stage": "sft", "parent_run_id": "",
                                "extra": {"output_dir": str(work), "tokenized_path": str(dataset)}}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "kubetune.components.train_ranks", "--node", str(spec)],
                              env={**os.environ, "PET_NNODES": "2", "PET_NODE_RANK": str(rank),
                                   "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "127.0.0.1",
                                   "PET_MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "node 1 of 2: launching torchrun" in logs[1]
    summary = json.loads((work / "run_summary.json").read_text())
    assert (summary["distributed"]["world_size"], summary["distributed"]["nodes"]) == (2, 2)
    assert (work / "adapter_model.safetensors").is_file()
