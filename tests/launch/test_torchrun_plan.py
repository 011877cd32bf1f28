"""When `kubetune train` re-runs itself under torchrun, and with which arguments (no processes started)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kubetune.launch.torchrun import LaunchError, TorchrunPlan, child_environment, torchrun_plan

REPO = Path(__file__).resolve().parents[2]


def test_one_process_without_a_request_or_several_gpus() -> None:
    assert torchrun_plan({}, gpu_count=0) is None
    assert torchrun_plan({}, gpu_count=1) is None
    assert torchrun_plan({"NPROC_PER_NODE": "4"}, gpu_count=1) is None  # as llamafactory-cli: FORCE_TORCHRUN asks


def test_force_torchrun_with_llama_factory_variables() -> None:
    plan = torchrun_plan({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "MASTER_PORT": "29555"}, gpu_count=0)
    assert plan == TorchrunPlan(nnodes=1, node_rank=0, nproc_per_node=2, master_addr="127.0.0.1", master_port=29555)
    assert plan.command(["train", "cfg.yaml", "lr=1"]) == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--node_rank=0", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", "--master_port=29555", "-m", "kubetune.cli", "train", "cfg.yaml", "lr=1"]


def test_several_visible_gpus_launch_one_process_each() -> None:
    plan = torchrun_plan({}, gpu_count=4)
    assert plan is not None and plan.nproc_per_node == 4 and plan.world_size == 4
    assert 0 < plan.master_port < 65536


def test_a_rank_already_launched_runs_as_itself() -> None:
    assert torchrun_plan({"FORCE_TORCHRUN": "1", "RANK": "1", "WORLD_SIZE": "2"}, gpu_count=4) is None


def test_kubeflow_trainer_pet_variables() -> None:
    env = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "8", "PET_MASTER_ADDR": "job-node-0-0.job",
           "PET_MASTER_PORT": "29400"}
    plan = torchrun_plan(env, gpu_count=8)
    assert plan == TorchrunPlan(nnodes=2, node_rank=1, nproc_per_node=8, master_addr="job-node-0-0.job",
                                master_port=29400)
    assert plan.world_size == 16


def test_many_nodes_agree_on_a_fixed_default_port() -> None:
    plan = torchrun_plan({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"}, gpu_count=1)
    assert plan is not None and plan.master_port == 29500


@pytest.mark.parametrize(("env", "message"), [
    ({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "two"}, "NPROC_PER_NODE='two': expected an integer ≥ 1"),
    ({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "0"}, "NPROC_PER_NODE='0'"),
    ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK=2 but NNODES=2: node ranks run from 0 to 1"),
    ({"NNODES": "2", "NODE_RANK": "-1"}, "NODE_RANK='-1': expected an integer ≥ 0"),
])
def test_bad_launch_variables_are_named(env: dict, message: str) -> None:
    with pytest.raises(LaunchError, match=message.replace("(", r"\(")):
        torchrun_plan(env, gpu_count=0)


def test_cpu_ranks_share_the_cores_unless_told() -> None:
    plan = TorchrunPlan(nnodes=1, node_rank=0, nproc_per_node=2, master_addr="127.0.0.1", master_port=1)
    assert int(child_environment(plan, {})["OMP_NUM_THREADS"]) >= 1
    assert child_environment(plan, {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"


def test_a_trainjob_node_reads_the_torch_runtimes_pet_variables() -> None:
    from kubetune.launch.torchrun import node_plan

    env = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": "8",
           "PET_MASTER_ADDR": "kt-sft-abc-node-0-0.kt-sft-abc", "PET_MASTER_PORT": "29400"}
    plan = node_plan(env, gpu_count=8)
    assert (plan.nnodes, plan.node_rank, plan.nproc_per_node, plan.world_size) == (2, 1, 8, 16)
    assert (plan.master_addr, plan.master_port) == ("kt-sft-abc-node-0-0.kt-sft-abc", 29400)
    assert node_plan({**env, "PET_NPROC_PER_NODE": "auto"}, gpu_count=4).nproc_per_node == 4  # torchrun's word


def test_a_pytorchjob_pod_counts_pods_in_world_size_and_rank() -> None:
    """The Training Operator's WORLD_SIZE/RANK count pods: on a node they are the node count and rank, not a
    rank of its own — so the node launches its ranks instead of running as one."""
    from kubetune.launch.torchrun import node_plan, torchrun_plan

    env = {"WORLD_SIZE": "3", "RANK": "2", "MASTER_ADDR": "kt-sft-abc-master-0", "MASTER_PORT": "23456",
           "NPROC_PER_NODE": "8"}
    assert torchrun_plan(env, gpu_count=8) is None  # what a rank sees: so the node must ask node_plan
    plan = node_plan(env, gpu_count=8)
    assert (plan.nnodes, plan.node_rank, plan.nproc_per_node, plan.master_port) == (3, 2, 8, 23456)


RANK_WAITS_FOR_SIGTERM = """
import os, pathlib, signal, sys, time
here = pathlib.Path(os.environ["RANKS_DIR"])
def stop(signum, frame):
    (here / f"stopped-{os.environ['RANK']}").write_text("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(here / f"started-{os.environ['RANK']}").write_text("")
time.sleep(120)
"""

LAUNCHER = """
import os
import sys
from kubetune.launch.torchrun import TorchrunPlan, run_torchrun
plan = TorchrunPlan(nnodes=1, node_rank=0, nproc_per_node=2, master_addr="127.0.0.1", master_port=int(sys.argv[1]))
sys.exit(run_torchrun(plan, [], module="rank_waits"))
"""


def test_a_sigterm_to_the_launcher_reaches_every_rank(tmp_path: Path) -> None:
    """Kubernetes pre-empts a pod with SIGTERM to its first process: the ranks under torchrun must hear it."""
    import signal
    import socket
    import subprocess
    import time

    (tmp_path / "rank_waits.py").write_text(RANK_WAITS_FOR_SIGTERM)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RANKS_DIR": str(tmp_path)}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(port)], env=env)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"started-{rank}").exists() for rank in (0, 1)):
        assert launcher.poll() is None and time.monotonic() < deadline, "the ranks never started"
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    try:
        code = launcher.wait(timeout=60)
    finally:
        launcher.kill()
    assert [(tmp_path / f"stopped-{rank}").read_text() for rank in (0, 1)] == ["SIGTERM", "SIGTERM"]
    assert code != 0  # torchrun reports the stop: a pre-empted step is not a finished one


def test_a_deepspeed_config_launches_torchrun_even_for_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed without a launcher's variables looks for MPI (`No module named 'mpi4py'`): one rank under torchrun.

    The launch itself is replaced here (the DeepSpeed runs under torchrun are tests/train/test_deepspeed_run.py).
    """
    from kubetune import cli
    from kubetune.config import load_config

    assert torchrun_plan({}, gpu_count=0) is None
    plan = torchrun_plan({}, gpu_count=0, force=True)
    assert plan is not None and plan.world_size == 1
    launched: list[TorchrunPlan] = []
    monkeypatch.setattr("kubetune.launch.torchrun.run_torchrun", lambda plan, args, **_: launched.append(plan) or 0)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)  # one device, as on a 1-GPU box
    for name in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "NNODES", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    plain = load_config(str(REPO / "examples" / "sft_lora.yaml"))
    assert cli._launch_ranks(plain, ["sft_lora.yaml"]) is None  # runs in this process
    sharded = load_config(str(REPO / "examples" / "sft_lora.yaml"),
                          [f"deepspeed={REPO / 'examples' / 'deepspeed' / 'ds_z2_config.json'}"])
    assert cli._launch_ranks(sharded, ["sft_lora.yaml"]) == 0
    assert [plan.world_size for plan in launched] == [1]


def test_the_ranks_get_save_on_sigterm_grace_before_torchrun_kills_them() -> None:
    plan = torchrun_plan({"FORCE_TORCHRUN": "1"}, gpu_count=0)
    assert plan is not None
    assert child_environment(plan, {}, shutdown_timeout=60)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "65"
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in child_environment(plan, {})  # off: torchrun's own 30 s
    kept = child_environment(plan, {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "7"}, shutdown_timeout=60)
    assert kept["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "7"
