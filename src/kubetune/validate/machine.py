"""World rules about this machine: are the kernels and optimizer packages a config asks for installed, and can
they run here?"""

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


# switch → (module, pip package, kubetune extra) of the optimisers that come from their own package
OPTIMIZER_PACKAGES = {"use_apollo": ("apollo_torch", "apollo-torch", "apollo"),
                      "use_adam_mini": ("adam_mini", "adam-mini", "adam-mini")}


def optimizer_packages_installed(cfg: RunConfig) -> list[Problem]:
    """APOLLO and Adam-mini come from their authors' packages, kubetune's optional extras."""
    problems = []
    for key, (module, package, extra) in OPTIMIZER_PACKAGES.items():
        if getattr(cfg.method, key) and importlib.util.find_spec(module) is None:
            problems.append(Problem(key, True, cfg.origin(key), f"needs the package {package}, not installed here",
                                    f"pip install kubetune[{extra}] (or {package}), or remove {key}"))
    return problems


def _has_cuda() -> bool:
    import torch  # only when Liger kernels are asked for

    return torch.cuda.is_available()
