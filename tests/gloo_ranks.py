"""Run a function on two real gloo ranks (two processes spawned here), for tests of collective code."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def on_two_gloo_ranks(fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """`fn(rank, *args)` on ranks 0 and 1 of one gloo process group; what each returned, by rank.

    `fn` must be a module-level function (the spawned processes import it by name).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(fn, port, results, args), nprocs=2, join=True)
    return dict(results)


def _rank(rank: int, fn: Callable[..., Any], port: int, results: dict, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = fn(rank, *args)
    finally:
        dist.destroy_process_group()
