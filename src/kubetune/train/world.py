"""Which processes run a stage: the world torchrun (or Kubeflow Trainer, or a single process) gave it.

Every rank runs the whole recipe; the Trainer shards the batches and syncs the gradients. What
must happen once (writing outputs, plots, summaries, generating predictions) asks `World.is_main`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """Attributes:
    size: processes in the job (`WORLD_SIZE`, 1 without a launcher).
    rank: this process's global rank (`RANK`).
    local_size: processes on this node (`LOCAL_WORLD_SIZE`).
    strategy: how the model and its optimizer state are spread over them: "single", "ddp",
        "deepspeed zero-2", "fsdp", ... (`kubetune.train.strategy.strategy_name`).
    """

    size: int = 1
    rank: int = 0
    local_size: int = 1
    strategy: str = "single"

    @property
    def nodes(self) -> int:
        return max(1, self.size // max(1, self.local_size))

    @property
    def is_main(self) -> bool:
        """The process that writes the outputs (global rank 0)."""
        return self.rank == 0

    def describe(self) -> str:
        """E.g. `world size 2 (2 ranks × 1 node), strategy ddp`."""
        nodes = self.nodes
        return (f"world size {self.size} ({self.local_size} rank{'s' if self.local_size != 1 else ''} × "
                f"{nodes} node{'s' if nodes != 1 else ''}), strategy {self.strategy}")

    def as_dict(self) -> dict[str, int | str]:
        """What run_summary.json records under `distributed`."""
        return {"world_size": self.size, "nodes": self.nodes, "ranks_per_node": self.local_size,
                "strategy": self.strategy}


def current_world(strategy: str | None = None) -> World:
    """The world of this process, from the variables torchrun sets (a single process without them)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    return World(size=size, rank=int(os.environ.get("RANK", "0")), local_size=local,
                 strategy=strategy or ("ddp" if size > 1 else "single"))


def is_main_process() -> bool:
    """Global rank 0 (or no launcher): the one process that writes files meant to exist once."""
    return int(os.environ.get("RANK", "0")) == 0
