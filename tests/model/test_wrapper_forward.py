"""A fused loss run as the DDP wrapper's forward: the wrapper's hooks see it, and the module is left as it was."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kubetune.model.wrapper_forward import forward_through_wrapper


@pytest.fixture()
def one_rank_group(monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_computation_runs_inside_the_wrappers_forward_and_the_modules_own_forward_comes_back(
        one_rank_group: None) -> None:
    module = nn.Linear(3, 1)
    own = module.forward
    module.forward = lambda x: own(x) * 2  # as accelerate's autocast wrapper sits on the module it prepares
    kept = module.__dict__["forward"]
    ddp = DistributedDataParallel(module)
    calls = []
    ddp.register_forward_pre_hook(lambda mod, args: calls.append("wrapper"))

    loss = forward_through_wrapper(ddp, lambda: module.weight.sum() * 3)
    loss.backward()
    assert calls == ["wrapper"]  # the wrapper's forward ran (and with it DDP's reducer preparation)
    torch.testing.assert_close(module.weight.grad, torch.full((1, 3), 3.0))
    assert module.__dict__["forward"] is kept  # not deleted: the instance forward it had is back
    assert forward_through_wrapper(module, lambda: 7) == 7  # an unwrapped model: called directly


def test_the_modules_forward_comes_back_when_the_computation_fails(one_rank_group: None) -> None:
    module = nn.Linear(3, 1)
    ddp = DistributedDataParallel(module)

    def fails() -> torch.Tensor:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        forward_through_wrapper(ddp, fails)
    assert "forward" not in module.__dict__
    assert ddp(torch.ones(1, 3)).shape == (1, 1)  # the class's forward again
