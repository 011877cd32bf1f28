"""PPO checkpoints: everything a killed run needs to continue exactly where it stopped.

`checkpoint-N/` holds the policy as it would be released (the LoRA adapter, or the full model)
plus `value_head.safetensors`, and the training state: `optimizer.pt`, `scheduler.pt`,
`rng_state.pth` (Python, NumPy, torch and CUDA generators; `rng_state_<rank>.pth`, one per rank,
when several ranks train) and `ppo_state.json` (step, KL controller, score normaliser). A
checkpoint is written to a hidden folder and renamed into place, so a run killed mid-save never
leaves a half-written `checkpoint-N` behind to resume from. Under data parallelism rank 0 writes
the weights and the optimizer (the same on every rank), and each rank its own generators.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from kubetune.model.value_head import VALUE_HEAD_FILE, load_value_head, save_value_head
from kubetune.rl.ranks import Ranks

logger = logging.getLogger(__name__)

STATE_FILE = "ppo_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pth"
ADAPTER_FILE = "adapter_model.safetensors"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def save_policy(policy: Any, directory: str | Path) -> None:
    """Write the policy (adapter or full model, via `save_pretrained`) and its value head."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    policy.pretrained_model.save_pretrained(str(directory))
    save_value_head(policy.v_head, directory)


def load_policy_weights(policy: Any, directory: str | Path) -> None:
    """Load what `save_policy` wrote back into an identically built policy (adapter or full weights + head).

    Raises:
        FileNotFoundError / ValueError: the folder holds no matching weights.
    """
    from peft import PeftModel, set_peft_model_state_dict

    directory = Path(directory)
    lm = policy.pretrained_model
    if isinstance(lm, PeftModel):
        result = set_peft_model_state_dict(lm, load_file(str(directory / ADAPTER_FILE)))
        if result.unexpected_keys:
            raise ValueError(f"{directory}: adapter weights do not fit the policy: {result.unexpected_keys[:5]}")
    else:
        files = [p for p in sorted(directory.glob("*.safetensors")) if p.name not in (VALUE_HEAD_FILE, ADAPTER_FILE)]
        if not files:
            raise FileNotFoundError(f"{directory}: no model weights (*.safetensors) to resume from")
        state: dict[str, torch.Tensor] = {}
        for path in files:
            state.update(load_file(str(path)))
        result = lm.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{directory}: weights do not fit the policy: {result.unexpected_keys[:5]}")
    load_value_head(policy.v_head, directory)


def rng_state() -> dict[str, Any]:
    """The state of every random generator a PPO step draws from (sampling, shuffling, dropout)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),  # plain lists: loadable with weights_only
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(ranks: Ranks) -> str:
    """This rank's generator file: `rng_state.pth` for one process, `rng_state_<rank>.pth` for several."""
    return RNG_FILE if ranks.size == 1 else f"rng_state_{ranks.rank}.pth"


def save_checkpoint(output_dir: Path, step: int, policy: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], *, save_total_limit: int | None = None,
                    save_only_model: bool = False, ranks: Ranks | None = None) -> Path:
    """Write `output_dir/checkpoint-<step>` atomically and prune old checkpoints (every rank calls it).

    Args:
        output_dir: the run's output folder.
        step: the PPO update just finished.
        policy: the `ModelWithValueHead` (not its DDP wrapper).
        optimizer, scheduler: their states are saved for resuming.
        state: JSON-able training state (step, KL controller, score normaliser, ...).
        save_total_limit: keep at most this many checkpoints (oldest removed first; None = all).
        save_only_model: skip optimizer, scheduler and RNG state (smaller; the run cannot resume exactly).
        ranks: the data-parallel ranks (default: this process alone).
    """
    ranks = ranks or Ranks()
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp{os.getpid()}"
    if ranks.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        save_policy(policy, tmp)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        if not save_only_model:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
    tmp = ranks.broadcast(tmp)  # rank 0's folder (its pid in the name)
    if not save_only_model:
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / rng_file(ranks))
    ranks.barrier()  # every rank's generators are in before the folder is renamed into place
    if ranks.is_main:
        publish(tmp, final)
        prune_checkpoints(output_dir, save_total_limit)
    ranks.barrier()
    if not (final / STATE_FILE).is_file():  # a rank on another node with its own disk: it could never resume
        raise RuntimeError(f"rank {ranks.rank} cannot see {final}, which rank 0 just wrote: output_dir must be a "
                           "folder every rank shares (a ReadWriteMany volume across nodes)")
    return final


def publish(tmp: Path, final: Path) -> None:
    """Move the finished folder `tmp` to `final` in one rename; an older `final` is renamed out of the way first.

    Deleting an older `final` in place (a rerun saving the same step again) could be cut short by a kill with its
    `ppo_state.json` still there and its weights gone: renamed aside first, it no longer has a checkpoint's name.
    """
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: str | Path, policy: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, ranks: Ranks | None = None) -> dict[str, Any]:
    """Restore the policy, optimizer, scheduler and RNG state from a checkpoint; return its training state."""
    ranks = ranks or Ranks()
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a ppo checkpoint (no {STATE_FILE}): point "
                                "resume_from_checkpoint at a checkpoint-N folder of a ppo run")
    load_policy_weights(policy, directory)
    if (directory / OPTIMIZER_FILE).is_file():
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))
        scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))
        generators = directory / rng_file(ranks)
        if generators.is_file():
            set_rng_state(torch.load(generators, weights_only=True))
        else:
            logger.warning("%s has no %s (written by another number of ranks): the random generators start "
                           "afresh, so sampling differs from the uninterrupted run", directory, generators.name)
    else:
        logger.warning("%s has no optimizer state (save_only_model): resuming with a fresh optimizer", directory)
    return json.loads((directory / STATE_FILE).read_text())


def prune_checkpoints(output_dir: Path, limit: int | None) -> None:
    """Delete the oldest `checkpoint-N` folders beyond `limit`."""
    if not limit:
        return
    found = sorted((int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)))
    for _, path in found[:-limit]:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("deleted %s (save_total_limit %d)", path, limit)
