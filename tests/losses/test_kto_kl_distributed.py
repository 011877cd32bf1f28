"""KTO's reference point z over two real gloo ranks: every rank gets the mean of all ranks' rows."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kubetune.losses.preference import kto_kl_estimate

POLICY = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -6.0, -0.5]])  # rank 0's rows, rank 1's rows
REFERENCE = torch.tensor([[-4.0, -4.0, -4.0], [-2.5, -3.0, -1.0]])


def _rank(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = float(kto_kl_estimate(POLICY[rank], REFERENCE[rank]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_one_reference_point() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(port, results), nprocs=2, join=True)
    whole = float(kto_kl_estimate(POLICY.flatten(), REFERENCE.flatten()))  # one process, both ranks' rows
    assert whole > 0
    assert results[0] == results[1] == whole
    # each rank alone would have had its own: rank 1's rows alone average below 0, so its z would clamp to 0
    assert float(kto_kl_estimate(POLICY[1], REFERENCE[1])) == 0.0
