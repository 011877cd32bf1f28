"""How a run spreads over devices — one process, DDP, DeepSpeed ZeRO or FSDP — decided from the config and the launch.

Pure: reads the config, the DeepSpeed/FSDP JSON it names (preflight, `kubetune.validate.distributed`, has
checked them) and the launcher's `WORLD_SIZE`; imports neither torch nor DeepSpeed. The stage logs
`strategy_name`, and asks `params_are_sharded` before reading a parameter outside the model's forward.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubetune.config import RunConfig
from kubetune.config.rules_distributed import fsdp_version

OFFLOADED = ("cpu", "nvme")


def world_size() -> int:
    """Processes in this run, as torchrun (or any launcher following its convention) sets `WORLD_SIZE`; 1 when unset."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _settings(value: str | dict[str, Any] | None) -> dict[str, Any]:
    """What a `deepspeed`/`fsdp_config` value holds: the mapping itself, or its JSON file read; {} when unset."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    return json.loads(Path(value).expanduser().read_text(encoding="utf-8"))


def deepspeed_settings(cfg: RunConfig) -> dict[str, Any] | None:
    """The DeepSpeed config `deepspeed` names, as written (with its "auto"s); None when DeepSpeed is off."""
    return _settings(cfg.train.deepspeed) if cfg.train.deepspeed else None


def zero_stage(cfg: RunConfig) -> int | None:
    """The ZeRO stage of the DeepSpeed config (0 when it names none, as DeepSpeed reads it); None without DeepSpeed."""
    ds = deepspeed_settings(cfg)
    return None if ds is None else int(ds.get("zero_optimization", {}).get("stage", 0))


def _deepspeed_offloads(ds: dict[str, Any]) -> bool:
    zero = ds.get("zero_optimization", {})
    return any(zero.get(part, {}).get("device", "none") in OFFLOADED for part in ("offload_optimizer", "offload_param"))


def _fsdp_offloads(cfg: RunConfig, fsdp_config: dict[str, Any]) -> bool:
    return "offload" in cfg.train.fsdp_options or bool(fsdp_config.get("cpu_offload", fsdp_config.get(
        "fsdp_cpu_offload", False)))


def strategy_name(cfg: RunConfig) -> str:
    """The run's strategy in a few words, for the log line: "deepspeed zero-2", "deepspeed zero-3 (offload)",
    "fsdp2", "fsdp1 (offload)", "ddp" (several processes, each with the whole model) or "single".

    Args:
        cfg: the run config (its `deepspeed`, `fsdp` and `fsdp_config`); the process count comes from
            `WORLD_SIZE`. DeepSpeed and FSDP are named even in one process: they still wrap the model.
    """
    ds = deepspeed_settings(cfg)
    if ds is not None:
        return f"deepspeed zero-{zero_stage(cfg)}" + (" (offload)" if _deepspeed_offloads(ds) else "")
    if cfg.train.fsdp_options:
        fsdp_config = _settings(cfg.train.fsdp_config)
        return f"fsdp{fsdp_version(fsdp_config)}" + (" (offload)" if _fsdp_offloads(cfg, fsdp_config) else "")
    return "ddp" if world_size() > 1 else "single"


def params_are_sharded(cfg: RunConfig) -> bool:
    """Whether a parameter read outside the model's forward may be a shard, not the whole tensor.

    ZeRO-3 partitions every parameter across ranks and gathers each for its module's forward only
    (outside it, `weight` is an empty placeholder); FSDP holds them as shards (DTensors in FSDP2, a
    flat buffer in FSDP1) the same way. ZeRO 0–2 never partition parameters (1 partitions the
    optimiser state, 2 the gradients too). A computation that reads e.g. the output head's weight
    itself must not run when this is true; it has to go through the (wrapped) model's forward instead.

    Args:
        cfg: the run config.
    """
    return zero_stage(cfg) == 3 or bool(cfg.train.fsdp_options)
