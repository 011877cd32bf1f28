"""Keep glibc from holding on to freed activation memory during CPU training.

Training allocates and frees many tensors of a few MB each step (activations, their
gradients, logits chunks). glibc serves allocations under its mmap threshold from the heap,
raises that threshold as large blocks are freed (up to 32 MB), and keeps freed heap memory
for reuse. A fixed 4 MB mmap threshold sends every large tensor to its own mapping, unmapped
when freed. Measured on SmolLM2-135M LoRA (batch 4, cutoff 512, checkpointing on, 2-core CPU):
peak RSS over 4 steps 3.8 GB before, 3.0-3.2 GB after; over the first 2 steps 3.8 → 1.8 GB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20


def release_freed_memory_promptly(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (and trim threshold) at `threshold` bytes for this process.

    Args:
        threshold: allocations at least this large get their own mapping. Default 4 MiB.

    Returns:
        True when applied; False off Linux/glibc (nothing to do there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl and others: no mallopt
    applied = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
    if applied:
        logger.debug("glibc mmap/trim threshold fixed at %d bytes", threshold)
    return applied
