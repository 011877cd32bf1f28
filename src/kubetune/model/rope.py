"""`rope_scaling`: stretch a model's rotary position embeddings past the context it was trained on.

As LLaMA-Factory does: in training the factor is ceil(cutoff_len / the model's original context) and nothing
changes when cutoff_len fits in it; at inference (no length given) the factor is 2. The config's
`max_position_embeddings` grows by the factor, and the scaling is written into the config before the model is
built, so its rotary embedding is built scaled (and a saved model keeps it).

transformers 5 keeps RoPE settings in `config.rope_parameters` (`rope_scaling` is its deprecated alias, and
setting it replaces the whole dict, dropping `rope_theta`): the scaling is merged into it instead.
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger(__name__)


def configure_rope(config: Any, rope_scaling: str | None, model_max_length: int | None) -> dict[str, Any] | None:
    """Write `rope_scaling` into `config` (in place), sized for `model_max_length`.

    Args:
        config: the model's `PretrainedConfig`, before the model is built.
        rope_scaling: linear, dynamic, yarn or llama3; None does nothing.
        model_max_length: the training length (`cutoff_len`); None at inference, where the factor is 2.

    Returns:
        The scaling written (rope_type, factor, ...), or None when nothing was changed.
    """
    if rope_scaling is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = getattr(text, "rope_parameters", None)
    if not isinstance(params, dict):
        logger.warning("rope_scaling: %s has no RoPE parameters; the model is left as it is", type(config).__name__)
        return None
    if params and all(isinstance(v, dict) for v in params.values()):  # one set per layer type (Gemma 3, ...)
        layer_params = list(params.values())
    else:
        layer_params = [params]
    original = layer_params[0].get("original_max_position_embeddings") or getattr(text, "max_position_embeddings",
                                                                                    None)
    if not original:
        logger.warning("rope_scaling: %s has no max_position_embeddings; the model is left as it is",
                       type(config).__name__)
        return None
    if model_max_length is not None:
        if model_max_length <= original:
            logger.warning("rope_scaling: cutoff_len %d fits in the model's %d positions; RoPE is not scaled",
                           model_max_length, original)
            return None
        if rope_scaling == "dynamic":
            logger.warning("rope_scaling: dynamic NTK scaling may not suit fine-tuning "
                           "(https://github.com/huggingface/transformers/pull/24653)")
        factor = float(math.ceil(model_max_length / original))
    else:
        factor = 2.0
    scaling: dict[str, Any] = {"rope_type": rope_scaling, "factor": factor}
    if rope_scaling in ("dynamic", "yarn", "llama3"):
        scaling["original_max_position_embeddings"] = original
    if rope_scaling == "llama3":
        scaling.update(low_freq_factor=1.0, high_freq_factor=4.0)
    for layer in layer_params:
        layer.update(scaling)
    text.rope_parameters = params
    text.max_position_embeddings = int(original * factor)
    logger.info("rope_scaling: %s, factor %g: max_position_embeddings %d -> %d", rope_scaling, factor, original,
                text.max_position_embeddings)
    return scaling
