"""Rules about how training is spread over devices that the config alone decides: DeepSpeed or FSDP.

What needs the world — that a DeepSpeed or FSDP JSON file exists and says something sensible — is
`kubetune.validate.distributed`'s preflight; `kubetune.config.rules` runs `check`.
"""

from __future__ import annotations

from typing import Any

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig

# transformers' `FSDPOption` values (trainer_utils), spelled out so config/ need not import transformers.
FSDP_OPTIONS = ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard", "hybrid_shard_zero2", "offload",
                "auto_wrap")
# FSDP2 shards fully or keeps parameters gathered between forward and backward; the others are FSDP1's only.
FSDP2_STRATEGIES = ("full_shard", "shard_grad_op")
FSDP1_ONLY = ("no_shard", "hybrid_shard", "hybrid_shard_zero2")


def check(cfg: RunConfig) -> list[Problem]:
    """Every DeepSpeed/FSDP problem in `cfg` the config alone shows (empty if none).

    Args:
        cfg: the run config.
    """
    return [*one_engine(cfg), *fsdp_settings(cfg)]


def one_engine(cfg: RunConfig) -> list[Problem]:
    """DeepSpeed and FSDP each shard and wrap the model; transformers runs one or the other."""
    if cfg.train.deepspeed and cfg.train.fsdp_options:
        return [Problem("fsdp", cfg.train.fsdp, cfg.origin("fsdp"),
                        "cannot be combined with deepspeed: both shard the model and wrap it for training",
                        "keep one: deepspeed (ZeRO-3 shards like FSDP's full_shard) or fsdp")]
    return []


def fsdp_settings(cfg: RunConfig) -> list[Problem]:
    """fsdp's options must be transformers' names, fit the FSDP version, and fsdp_config needs fsdp."""
    t = cfg.train
    if t.fsdp_config is not None and not t.fsdp_options:
        return [Problem("fsdp_config", t.fsdp_config, cfg.origin("fsdp_config"),
                        "is read only when FSDP is on, and fsdp is not set",
                        "set fsdp (e.g. full_shard auto_wrap), or remove fsdp_config")]
    unknown = [option for option in t.fsdp_options if option not in FSDP_OPTIONS]
    if unknown:
        return [Problem("fsdp", t.fsdp, cfg.origin("fsdp"), f"unknown FSDP option {', '.join(unknown)}",
                        f"use transformers' names, separated by spaces: {', '.join(FSDP_OPTIONS)}")]
    if isinstance(t.fsdp_config, str):
        return []  # a file: preflight reads it and runs the same check (`fsdp_version_fits`)
    return fsdp_version_fits(cfg, t.fsdp_config or {}, cfg.origin("fsdp_config")) if t.fsdp_options else []


def fsdp_version(fsdp_config: dict[str, Any]) -> object:
    """The FSDP version an fsdp_config asks for (transformers reads `version`, or `fsdp_version`); 2 by default."""
    return fsdp_config.get("version", fsdp_config.get("fsdp_version", 2))


def fsdp_version_fits(cfg: RunConfig, fsdp_config: dict[str, Any], where: str) -> list[Problem]:
    """The fsdp options must exist in the FSDP version fsdp_config asks for.

    Args:
        cfg: the run config (its `fsdp` options).
        fsdp_config: the FSDP settings, inline or read from their file.
        where: the settings' origin, for the problem to name.
    """
    version = fsdp_version(fsdp_config)
    if version not in (1, 2) or isinstance(version, bool):
        return [Problem("fsdp_config", fsdp_config, where, f"version is {version!r}; transformers runs FSDP 1 or 2",
                        "set version: 2 (FSDP2, the default) or remove it")]
    fsdp1_only = [option for option in cfg.train.fsdp_options if option in FSDP1_ONLY]
    if version == 2 and fsdp1_only:
        return [Problem("fsdp", cfg.train.fsdp, cfg.origin("fsdp"),
                        f"{', '.join(fsdp1_only)} is an FSDP1 strategy, and FSDP2 (the default) shards with "
                        f"{' or '.join(FSDP2_STRATEGIES)}",
                        "use full_shard (or shard_grad_op); FSDP1 (fsdp_config: {version: 1}) is deprecated in "
                        "transformers")]
    return []
