"""Rules of FP8 training (`fp8`, `fp8_backend`; `kubetune.model.fp8`): what it combines with, and which backend.

Whether the machine has FP8 tensor cores is checked where the step runs (the config may be validated on a
laptop for a GPU cluster), before the model is loaded.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig

# fp8_backend values that name a library kubetune does not ship, with what to use instead
_REFUSED_BACKENDS = {
    "te": "NVIDIA Transformer Engine is not a kubetune dependency (it builds against one CUDA version per image)",
    "msamp": "MS-AMP is not a kubetune dependency (LLaMA-Factory 0.9.5 also runs torchao for it)",
}


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem with the FP8 keys of `cfg`."""
    t = cfg.train
    if not t.fp8:
        if "fp8_backend" in cfg.explicit and t.fp8_backend != "auto":
            return [Problem("fp8_backend", t.fp8_backend, cfg.origin("fp8_backend"), "has no effect without fp8: true",
                            "set fp8: true, or remove fp8_backend")]
        return []
    problems = []
    if t.fp8_backend in _REFUSED_BACKENDS:
        problems.append(Problem("fp8_backend", t.fp8_backend, cfg.origin("fp8_backend"),
                                _REFUSED_BACKENDS[t.fp8_backend], "use fp8_backend: torchao (or auto)"))
    if cfg.model.quantization_bit is not None:
        # the base is stored in 4/8 bits: there is no bf16 weight for an FP8 matmul to cast from
        problems.append(Problem("fp8", True, cfg.origin("fp8"), "FP8 training cannot train a quantised model "
                                f"(quantization_bit: {cfg.model.quantization_bit})",
                                "remove quantization_bit, or fp8"))
    return problems
