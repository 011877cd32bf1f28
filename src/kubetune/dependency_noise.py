"""Warnings our dependencies print at import that say nothing to a kubetune user, filtered at their loggers.

transformers and peft import torchao whenever it is installed (it is, for `fp8`). On a CPU build of torch,
torchao's CUDA kernels cannot load and it logs "Failed to load .../_C*.so" for each, on every command. The filter
drops exactly those lines, and only where torch has no CUDA: on a CUDA build a kernel that fails to load is a
real problem, and the warning stays (as does its "no triton" notice). torchao also registers enums with torch's
pytree in a way torch 2.13 deprecates, and torch logs a notice for each: one for torchao's authors, dropped
everywhere.
"""

from __future__ import annotations

import logging


class _CudaKernelsOnCpuTorch(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cuda_only = (message.startswith("Failed to load ") and "/torchao/_C" in message) or (
            "Detected no triton" in message)  # Triton compiles GPU kernels: a CPU torch has none to compile
        if not cuda_only:
            return True
        import torch  # imported by then: torchao imports it first

        return torch.version.cuda is not None


class _EnumRegistrationNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Calling register_constant() on Enum subclasses is deprecated" not in record.getMessage()


# a logger's filters see only the records logged to it, not its children's: each logger is named
_FILTERS = {"torchao": _CudaKernelsOnCpuTorch, "torchao.kernel.intmm": _CudaKernelsOnCpuTorch,
            "torch.utils._pytree": _EnumRegistrationNotice}


def install_filters() -> None:
    """Attach each filter to its logger (idempotent)."""
    for name, kind in _FILTERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
