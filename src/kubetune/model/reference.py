"""π_ref, the reference model of dpo's log-ratio losses (sigmoid, hinge, ipo), of kto, of sft's ASFT loss, and
of ppo's KL penalty.

Which model the config asks for:

- LoRA without `ref_model`: the policy itself with its adapter disabled (`PeftModel.disable_adapter`):
  no second copy of the weights. When `adapter_name_or_path` continues an adapter (e.g. an SFT one),
  the reference is the base *without* it (earlier adapters of the list are merged into the base, so
  they are in the reference too), as in LLaMA-Factory. To use the SFT model as the reference, set
  `ref_model` to the base and `ref_model_adapters` to the SFT adapter (a second copy is loaded).
  Evaluating (`do_train: false`) keeps the last adapter unmerged too, so `kubetune eval` of a trained
  adapter measures it against the same reference it was trained with.
- freeze/full without `ref_model`: a frozen copy of the base, loaded a second time (evaluating such a
  model needs `ref_model`: the rules refuse to compare it with a copy of itself).
- `ref_model` (+ `ref_model_adapters`, merged; `ref_model_quantization_bit`): that model, frozen.
- orpo/simpo: none is loaded.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from kubetune.config import RunConfig
from kubetune.losses.causal_lm import scored_logps
from kubetune.model.adapters import prepare_for_training
from kubetune.model.loader import load_base_model

logger = logging.getLogger(__name__)


class Reference:
    """π_ref of the log-ratio losses (sigmoid, hinge, ipo, kto).

    Args:
        model: a separate frozen model; None = the policy with its LoRA adapter disabled. Default None.
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model

    @torch.no_grad()
    def logps(self, policy: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Summed log-probs of each sequence's labelled tokens under the reference: [S] (`scored_logps`)."""
        if self.model is not None:
            return scored_logps(self.model, batch)[0]
        from accelerate.utils import extract_model_from_parallel

        peft_model = extract_model_from_parallel(policy)
        if not hasattr(peft_model, "disable_adapter"):
            raise TypeError("a reference without a model needs a LoRA policy (PeftModel) whose adapter it disables")
        with peft_model.disable_adapter():
            return scored_logps(policy, batch)[0]

    @torch.no_grad()
    def label_rows(self, policy: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The reference at the batch's learnt positions, for ASFT's KL term (`sft_objectives.label_rows`):
        (hidden states, detached head weight), or (logits, None) for a model that is more than head(hidden)."""
        from accelerate.utils import extract_model_from_parallel

        from kubetune.losses.sft_objectives import label_rows

        if self.model is not None:
            rows, weight = label_rows(self.model, batch)
        else:
            peft_model = extract_model_from_parallel(policy)
            if not hasattr(peft_model, "disable_adapter"):
                raise TypeError("a reference without a model needs a LoRA policy (PeftModel) whose adapter it "
                                "disables")
            with peft_model.disable_adapter():
                rows, weight = label_rows(peft_model, batch)
        return rows, None if weight is None else weight.detach()


def load_reference(cfg: RunConfig, model_path: str, dtype: torch.dtype, device: torch.device | str) -> Reference:
    """The reference the config asks for (see the module docstring); load it only for losses that use one.

    Args:
        cfg: the run config (`ref_model*`, `finetuning_type`).
        model_path: the resolved `model_name_or_path` (for the frozen copy of full/freeze runs).
        dtype: weight dtype of the policy.
        device: where the policy trains (a separate reference is moved there unless it is quantised).
    """
    m = cfg.method
    if m.ref_model:
        adapters = [a.strip() for a in (m.ref_model_adapters or "").split(",") if a.strip()]
        ref_args = cfg.model.model_copy(update={
            "model_name_or_path": m.ref_model, "adapter_name_or_path": adapters or None,
            "quantization_bit": m.ref_model_quantization_bit, "gguf_file": None})
        model = load_base_model(ref_args, dtype=dtype, model_max_length=cfg.data.cutoff_len)
        # LoRA + not trainable merges the adapters into the base (or keeps one frozen on a quantised base)
        model = prepare_for_training(model, ref_args, m.model_copy(update={"finetuning_type": "lora"}),
                                     gradient_checkpointing=False, is_trainable=False)
        logger.info("reference: %s%s", m.ref_model, f" + {', '.join(adapters)}" if adapters else "")
    elif m.finetuning_type == "lora":
        logger.info("reference: the policy with its LoRA adapter disabled")
        return Reference(None)
    else:
        model = load_base_model(cfg.model, dtype=dtype, path=model_path, model_max_length=cfg.data.cutoff_len)
        logger.info("reference: a frozen copy of %s", cfg.model.model_name_or_path)
    model.requires_grad_(False)
    model.eval()
    disable_dropout(model)
    if getattr(model, "hf_device_map", None) is None:  # quantised models are placed when loaded
        model.to(device)
    return Reference(model)


def disable_dropout(model: nn.Module) -> None:
    """Turn every dropout off: the log-ratios must compare the policy and the reference on the same footing.

    TRL and LLaMA-Factory do the same in their preference trainers (so `lora_dropout` has no effect here).
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
