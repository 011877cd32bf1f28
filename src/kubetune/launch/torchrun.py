"""`kubetune train` on several processes: LLaMA-Factory's launch convention, handed to torchrun.

`llamafactory-cli train` re-runs itself under torchrun when `FORCE_TORCHRUN` is set or more
than one GPU is visible, sized by `NNODES`, `NODE_RANK`, `NPROC_PER_NODE`, `MASTER_ADDR` and
`MASTER_PORT`. `kubetune train` does the same, and reads Kubeflow Trainer's `PET_*` names of
those variables too. A process torchrun (or any launcher) started already has `RANK` and
`WORLD_SIZE`: it runs as that rank, launching nothing.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class LaunchError(ValueError):
    """A launch variable that cannot be used (named, with what was expected)."""


@dataclass(frozen=True)
class TorchrunPlan:
    """Attributes:
    nnodes: nodes in the job (`NNODES`).
    node_rank: this node's index (`NODE_RANK`).
    nproc_per_node: processes on this node (`NPROC_PER_NODE`; default: the visible GPUs, else 1).
    master_addr: where rank 0 listens (`MASTER_ADDR`, default 127.0.0.1).
    master_port: its port (`MASTER_PORT`; default a free one on one node, 29500 across nodes).
    """

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def command(self, args: Sequence[str], module: str = "kubetune.cli") -> list[str]:
        """The torchrun command line that runs `python -m <module> <args>` on every rank of this node."""
        return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={self.nnodes}",
                f"--node_rank={self.node_rank}", f"--nproc_per_node={self.nproc_per_node}",
                f"--master_addr={self.master_addr}", f"--master_port={self.master_port}",
                "-m", module, *args]

    def describe(self) -> str:
        return (f"{self.nproc_per_node} process{'es' if self.nproc_per_node != 1 else ''} × {self.nnodes} "
                f"node{'s' if self.nnodes != 1 else ''} (this is node {self.node_rank}; "
                f"master {self.master_addr}:{self.master_port})")


def torchrun_plan(env: Mapping[str, str] | None = None, gpu_count: int | None = None, *,
                  force: bool = False) -> TorchrunPlan | None:
    """How to re-run `kubetune train` under torchrun, or None to run in this process.

    Args:
        env: the environment (default `os.environ`).
        gpu_count: visible CUDA devices (default: asked from torch).
        force: launch even where the environment does not ask for it (as FORCE_TORCHRUN=1 does):
            a DeepSpeed run needs a launcher's variables even on one process, or DeepSpeed looks
            for MPI (`No module named 'mpi4py'`).

    Raises:
        LaunchError: a variable that is not a positive integer, or a node rank outside the nodes.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return None  # a rank already: the launcher that started this process did the launching
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count()
    force = force or env.get("FORCE_TORCHRUN", "").strip().lower() in ("1", "true", "yes", "y")
    nnodes = _number(env, "NNODES", 1)
    if not (force or gpu_count > 1 or nnodes > 1):
        return None
    node_rank = _number(env, "NODE_RANK", 0, minimum=0)
    if node_rank >= nnodes:
        raise LaunchError(f"NODE_RANK={node_rank} but NNODES={nnodes}: node ranks run from 0 to {nnodes - 1}")
    default_port = _free_port() if nnodes == 1 else 29500  # across nodes every node must name the same port
    return TorchrunPlan(nnodes=nnodes, node_rank=node_rank,
                        nproc_per_node=_nproc(env, gpu_count),
                        master_addr=_value(env, "MASTER_ADDR") or "127.0.0.1",
                        master_port=_number(env, "MASTER_PORT", default_port))


def node_plan(env: Mapping[str, str] | None = None, gpu_count: int | None = None) -> TorchrunPlan:
    """This pod's part of a job Kubeflow started on several nodes: torchrun over this node's GPUs.

    Kubeflow Trainer's torch runtime gives each node `PET_NNODES`, `PET_NODE_RANK`, `PET_NPROC_PER_NODE`,
    `PET_MASTER_ADDR` and `PET_MASTER_PORT`. A Training Operator v1 PyTorchJob gives `MASTER_ADDR`,
    `MASTER_PORT`, and `WORLD_SIZE` / `RANK` counting pods, not processes: read here as the node count and
    this node's rank. Either way this process is a node, not a rank: torchrun starts the ranks.

    Args:
        env: the environment (default `os.environ`).
        gpu_count: visible CUDA devices (default: asked from torch).
    """
    node_env = dict(os.environ if env is None else env)
    if _value(node_env, "NNODES") is None and "WORLD_SIZE" in node_env and "RANK" in node_env:
        node_env["NNODES"], node_env["NODE_RANK"] = node_env["WORLD_SIZE"], node_env["RANK"]
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        node_env.pop(name, None)
    node_env["FORCE_TORCHRUN"] = "1"
    plan = torchrun_plan(node_env, gpu_count)
    assert plan is not None  # FORCE_TORCHRUN
    return plan


def child_environment(plan: TorchrunPlan, env: Mapping[str, str] | None = None, *,
                      shutdown_timeout: float | None = None) -> dict[str, str]:
    """The environment of the torchrun process: threads split between a CPU node's ranks.

    torchrun sets `OMP_NUM_THREADS=1` when it is unset, which on a CPU-only node leaves all but one
    core per rank idle; an explicit `OMP_NUM_THREADS` is kept.

    Args:
        plan: the launch.
        env: the environment to start from (default `os.environ`).
        shutdown_timeout: seconds the ranks get after a SIGTERM before torchrun SIGKILLs them
            (`TORCH_ELASTIC_SHUTDOWN_TIMEOUT`, torchrun's default 30), for `save_on_sigterm_grace`: a few
            seconds more than it, so that the ranks' own late-checkpoint message comes first. An explicit
            `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` is kept. Default None: torchrun's.
    """
    child = dict(os.environ if env is None else env)
    child.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node)))
    if shutdown_timeout:
        child.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(math.ceil(shutdown_timeout) + 5))
    return child


def _value(env: Mapping[str, str], name: str) -> str | None:
    # Kubeflow Trainer's torch runtime sets PET_<name> (torchrun's own environment prefix)
    for key in (name, f"PET_{name}"):
        if env.get(key, "").strip():
            return env[key].strip()
    return None


def _number(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = _value(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise LaunchError(f"{name}={raw!r}: expected an integer ≥ {minimum}")
    return value


def _nproc(env: Mapping[str, str], gpu_count: int) -> int:
    # torchrun's own words, which Kubeflow Trainer passes through as PET_NPROC_PER_NODE: auto/gpu, cpu
    raw = (_value(env, "NPROC_PER_NODE") or "").lower()
    if raw in ("auto", "gpu"):
        return max(gpu_count, 1) if raw == "gpu" or gpu_count else os.cpu_count() or 1
    if raw == "cpu":
        return os.cpu_count() or 1
    return _number(env, "NPROC_PER_NODE", max(gpu_count, 1))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_torchrun(plan: TorchrunPlan, args: Sequence[str], module: str = "kubetune.cli", *,
                 shutdown_timeout: float | None = None) -> int:
    """Run `plan.command(args, module)` with `child_environment(plan, shutdown_timeout=...)` and wait; its exit code.

    A SIGTERM to this process is passed on to torchrun, which passes it on to its ranks. That is how
    Kubernetes pre-empts a pod (SIGTERM to its first process, SIGKILL after the grace period):
    without the hand-over the ranks would never hear of it and die mid-step at the SIGKILL.
    (Ctrl-C needs no hand-over: the terminal sends SIGINT to the whole process group.)
    """
    command, env = plan.command(args, module=module), child_environment(plan, shutdown_timeout=shutdown_timeout)
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        return subprocess.call(command, env=env)
    children: list[subprocess.Popen] = []
    pending: list[int] = []

    def hand_on(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)
        if not children:
            pending.append(signum)  # arrived before torchrun started: sent as soon as it has

    previous = signal.signal(signal.SIGTERM, hand_on)  # before the start, so no SIGTERM is lost
    try:
        children.append(subprocess.Popen(command, env=env))
        for signum in pending:
            children[0].send_signal(signum)
        return children[0].wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
