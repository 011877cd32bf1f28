"""World rules about this machine: are the kernels a config asks for installed, and can they run here?"""

from __future__ import annotations

import importlib.util

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig


def kernels_installed(cfg: RunConfig) -> list[Problem]:
    """FlashAttention-2 and Liger kernels must be installed (and Liger needs a CUDA GPU)."""
    problems = []
    if cfg.model.flash_attn == "fa2" and importlib.util.find_spec("flash_attn") is None:
        problems.append(Problem("flash_attn", "fa2", cfg.origin("flash_attn"),
                                "FlashAttention-2 is not installed here",
                                "use flash_attn: auto (picks the best available) or install flash-attn on a GPU"))
    if cfg.model.enable_liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        problems.append(Problem("enable_liger_kernel", True, cfg.origin("enable_liger_kernel"),
                                "Liger kernels are not installed here (they need a GPU)",
                                "remove enable_liger_kernel, or run on a GPU image with liger-kernel"))
    elif cfg.model.enable_liger_kernel and not _has_cuda():
        problems.append(Problem("enable_liger_kernel", True, cfg.origin("enable_liger_kernel"),
                                "Liger kernels are Triton GPU kernels, and this machine has no CUDA GPU",
                                "remove enable_liger_kernel here (keep it in configs that run on a GPU)"))
    return problems


def _has_cuda() -> bool:
    import torch  # only when Liger kernels are asked for

    return torch.cuda.is_available()
