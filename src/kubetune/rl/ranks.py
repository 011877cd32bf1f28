"""PPO over data-parallel ranks: which rows a rank owns, and the few global reductions PPO needs.

Every rank rolls out its own contiguous share of an update's prompts, scores them with its own
copy of the reward source, and runs GAE on its own rows (GAE is per sequence). Gradients are
averaged by DistributedDataParallel. What else must be global, so that N ranks × b prompts train
like 1 rank × N·b:

- the whitening of advantages (and of rewards): mean and variance over every rank's tokens;
- the score normaliser's running moments: updated with every rank's scores, in rank order;
- the KL that drives the adaptive controller, and every logged statistic.

The loss of a minibatch is a token mean per rank (and per micro-batch), and DDP averages those, as
TRL does: N ranks equal one process accumulating N micro-batches, and one batch of N·b where the
responses are equally long. With one process every method is the identity, so the single-process
loop runs the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Attributes:
    size: the number of ranks (1 without a launcher).
    rank: this process's global rank.
    device: where collectives run (NCCL needs CUDA tensors; gloo takes CPU ones).
    """

    size: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_arguments(cls, args: Any) -> Ranks:
        """The ranks of a `TrainingArguments` whose device set-up has run (it starts the process group)."""
        device = args.device  # first access initialises torch.distributed under torchrun
        size = args.world_size if dist.is_available() and dist.is_initialized() else 1
        return cls(size=size, rank=args.process_index if size > 1 else 0, device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous part of `items` (whose length the rank count divides)."""
        if len(items) % self.size:
            raise ValueError(f"{len(items)} rows do not split evenly over {self.size} ranks")
        n = len(items) // self.size
        return list(items[self.rank * n:(self.rank + 1) * n])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `tensor` over all ranks (a new tensor on `tensor`'s device)."""
        if self.size == 1:
            return tensor
        total = tensor.detach().to(self.device, torch.float64, copy=True)
        dist.all_reduce(total)
        return total.to(tensor.device, tensor.dtype)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (same shape on each), concatenated along dim 0 in rank order."""
        if self.size == 1:
            return tensor
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(tensor.device)

    def gather_lists(self, items: list[T]) -> list[T]:
        """Every rank's list (any picklable items), concatenated in rank order."""
        if self.size == 1:
            return items
        parts: list[list[T] | None] = [None] * self.size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in (part or [])]

    def mean_of(self, stats: dict[str, float]) -> dict[str, float]:
        """Each statistic averaged over the ranks (every rank must pass the same keys)."""
        if self.size == 1 or not stats:
            return stats
        keys = sorted(stats)
        total = self.sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64))
        return {k: float(v) / self.size for k, v in zip(keys, total.tolist(), strict=True)}

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (any picklable object)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()
