"""Rules of the re-weighted sft losses DFT, EAFT and ASFT (`kubetune.losses.sft_objectives`).

They replace the cross-entropy of the sft recipe (which pt shares), so only one can be chosen, only those stages
read them, and each `*_alpha` only with its own loss. ASFT is the one sft loss with a reference model, so there
`ref_model*` means what it means in dpo.
"""

from __future__ import annotations

from kubetune.config.errors import Problem
from kubetune.config.schema import FinetuningArguments, RunConfig

SFT_LOSS_FLAGS = ("use_dft_loss", "use_eaft_loss", "use_asft_loss")
SFT_LOSS_STAGES = ("sft", "pt")
# each loss's own setting
ALPHA_OF = {"asft_alpha": "use_asft_loss", "eaft_alpha": "use_eaft_loss"}
REF_KEYS = ("ref_model", "ref_model_adapters", "ref_model_quantization_bit")


def _changed(cfg: RunConfig, key: str) -> bool:
    return key in cfg.explicit and getattr(cfg.method, key) != FinetuningArguments.model_fields[key].default


def check(cfg: RunConfig) -> list[Problem]:
    """Every problem with the sft loss keys of `cfg`."""
    m = cfg.method
    chosen = [flag for flag in SFT_LOSS_FLAGS if getattr(m, flag)]
    problems = []
    if len(chosen) > 1:
        # LLaMA-Factory silently takes the first of DFT, EAFT, ASFT; one loss is trained, so say which
        problems.append(Problem(chosen[1], True, cfg.origin(chosen[1]),
                                f"only one sft loss can be trained, got {', '.join(chosen)}", "keep one of them"))
    if chosen and m.stage not in SFT_LOSS_STAGES:
        problems.append(Problem(chosen[0], True, cfg.origin(chosen[0]),
                                f"re-weights the sft cross-entropy; the {m.stage} stage trains its own loss",
                                f"remove {chosen[0]}, or use stage: sft"))
    for key, flag in ALPHA_OF.items():
        if _changed(cfg, key) and not getattr(m, flag):
            problems.append(Problem(key, getattr(m, key), cfg.origin(key), f"has no effect without {flag}: true",
                                    f"set {flag}: true, or remove {key}"))
    if m.stage in SFT_LOSS_STAGES:
        problems += _reference_keys(cfg)
    return problems


def _reference_keys(cfg: RunConfig) -> list[Problem]:
    """In sft and pt only ASFT reads a reference; its adapters and quantisation only with a ref_model."""
    m = cfg.method
    given = [key for key in REF_KEYS if getattr(m, key) is not None]
    if not m.use_asft_loss:
        return [Problem(key, getattr(m, key), cfg.origin(key),
                        f"the {m.stage} stage loads a reference model only for use_asft_loss", "remove it")
                for key in given]
    if m.ref_model is None:
        return [Problem(key, getattr(m, key), cfg.origin(key), "applies to ref_model, but no ref_model is set",
                        "set ref_model (e.g. the base model), or remove it")
                for key in ("ref_model_adapters", "ref_model_quantization_bit") if getattr(m, key) is not None]
    if m.ref_model_quantization_bit not in (None, 4, 8):
        return [Problem("ref_model_quantization_bit", m.ref_model_quantization_bit,
                        cfg.origin("ref_model_quantization_bit"), "must be 4 or 8", "use 4 or 8")]
    return []
