"""Unwrap models without importing DeepSpeed in a process that never uses it.

accelerate's `extract_model_from_parallel` — called by every `Trainer.__init__` and every
`save_pretrained` — runs `from deepspeed import DeepSpeedEngine` whenever DeepSpeed is
*installed*, only to test `isinstance(model, DeepSpeedEngine)`. The trainer image ships DeepSpeed,
so each step process (sft, evaluate, export, each torchrun rank) paid its import — 1–2.5 s on a
2-core CPU — without running a single ZeRO step.

A model can only be a `DeepSpeedEngine` once `deepspeed` is in `sys.modules`, so asking that
first gives the same answer without the import. A DeepSpeed run imports it (accelerate's
`prepare`, our strategy) before anything is wrapped, and then unwraps exactly as before.
"""

from __future__ import annotations

import sys


def defer_deepspeed_import() -> None:
    """Make accelerate's unwrapping import DeepSpeed only where DeepSpeed has already been imported.

    Idempotent; the check it replaces is used by `extract_model_from_parallel` alone (accelerate 1.x).
    """
    from accelerate.utils import other

    original = other.is_deepspeed_available
    if getattr(original, "_kubetune_deferred", False):
        return

    def deepspeed_already_imported() -> bool:
        # no DeepSpeedEngine can exist before its module is imported
        return "deepspeed" in sys.modules and original()

    deepspeed_already_imported._kubetune_deferred = True  # type: ignore[attr-defined]
    other.is_deepspeed_available = deepspeed_already_imported
