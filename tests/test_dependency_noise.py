"""kubetune drops torchao's kernel-loading warnings on a CPU torch (and torch's pytree notice), nothing else."""

import logging

import torch

import kubetune  # noqa: F401  (installs the filters)


def _passes(logger: str, message: str) -> bool:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, message, None, None)
    return bool(logging.getLogger(logger).filter(record))


def test_only_the_known_notices_are_dropped() -> None:
    kernel = "Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.so: Could not load this library"
    assert _passes("torchao", kernel) is (torch.version.cuda is not None)  # on a CUDA build it means something
    assert _passes("torchao", "Failed to load checkpoint shard") and _passes("torchao", "anything else")
    triton = "Warning: Detected no triton, on systems without Triton certain kernels will not work"
    assert _passes("torchao.kernel.intmm", triton) is (torch.version.cuda is not None)
    enum = ("<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an "
            "opaque value type. Calling register_constant() on Enum subclasses is deprecated and will be an error")
    assert not _passes("torch.utils._pytree", enum) and _passes("torch.utils._pytree", "another notice")
