"""Direct preference optimisation and its family: `pref_loss` sigmoid (DPO), hinge, ipo, orpo, simpo.

Reads top to bottom: set up tokenizer, data (chosen/rejected pairs) and policy; pick the reference
(none for orpo/simpo); train with resume; save the adapter or model, logs and plots; evaluate the
preference metrics on held-out pairs; predict (generate for held-out prompts, scored against the
chosen response).

Logged every `logging_steps` (and with `eval_` on held-out pairs): `rewards/chosen`,
`rewards/rejected`, `rewards/accuracies` (share of pairs whose chosen reward is higher),
`rewards/margins`, `logps/chosen`, `logps/rejected` (summed response log-probs; means for
ipo/orpo/simpo), `logits/chosen`, `logits/rejected` (mean logit over the response tokens), and
`sft_loss` when an SFT term is in the loss (`pref_ftx` > 0, or orpo).

Why a transformers.Trainer subclass and not TRL's DPOTrainer: see `kubetune.stages.preference`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kubetune.config import RunConfig
from kubetune.losses.causal_lm import causal_lm_parts
from kubetune.losses.preference import MEAN_LOGPS_LOSSES, REFERENCE_LOSSES, pairwise_loss
from kubetune.model import packed_attention
from kubetune.stages import preference
from kubetune.stages.preference import (
    PairwiseCollator,
    Reference,
    Stats,
    scored_logps,
)
from kubetune.train.arguments import training_arguments
from kubetune.train.recipe import write_bad_rows
from kubetune.train.result import StageResult

logger = logging.getLogger(__name__)

PLOTTED = ("loss", "eval_loss", "rewards/accuracies", "rewards/margins")


def run(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run the configured `do_train` / `do_eval` / `do_predict` steps of a dpo stage.

    Args:
        cfg: a validated config (`kubetune.config.load_config`); `cfg.train.output_dir` is required.
        callbacks: extra `TrainerCallback`s (trackers, tests that interrupt training).

    Returns:
        StageResult with the output directory, the metrics (train_loss, eval_rewards/accuracies, ...)
        and the paths written.
    """
    out = Path(cfg.train.output_dir or "outputs")
    out.mkdir(parents=True, exist_ok=True)
    do_train = cfg.train.do_train is not False
    do_eval = cfg.train.do_eval or cfg.train.eval_strategy != "no"

    # --- setup ---
    s = preference.setup(cfg, do_train=do_train, evaluate=do_eval or cfg.train.do_predict)
    args = training_arguments(cfg, out)
    m = cfg.method
    reference = (preference.load_reference(cfg, s.model_path, s.dtype, args.device)
                 if m.pref_loss in REFERENCE_LOSSES else None)
    objective = PairwiseObjective(m.pref_loss, beta=m.pref_beta, ftx=m.pref_ftx,
                                  label_smoothing=m.dpo_label_smoothing, simpo_gamma=m.simpo_gamma,
                                  reference=reference)
    collator = PairwiseCollator(preference.pad_id(s.tokenizer), **padding_free(cfg, s.model, reference))
    trainer = preference.build_trainer(s, args, objective, collator, do_train=do_train, do_eval=do_eval, out=out,
                                       callbacks=callbacks)
    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    write_bad_rows(out, s.data, files)

    # --- train ---
    if do_train:
        train_metrics, train_files = preference.train_and_save(trainer, cfg, s, out, PLOTTED)
        metrics.update(train_metrics)
        files.update(train_files)

    # --- evaluate: preference metrics on held-out pairs ---
    if do_eval and s.data.eval is not None:
        metrics.update(preference.evaluate(trainer, s.data.eval))

    # --- predict: generate for held-out prompts, scored against the chosen response ---
    if cfg.train.do_predict and s.data.eval is not None:
        rows = list(zip(s.data.eval["chosen_input_ids"], s.data.eval["chosen_labels"], strict=True))
        metrics.update(preference.predict_preferred(trainer, cfg, s, rows, out))
        files["predictions"] = str(out / "generated_predictions.jsonl")

    return preference.finish(out, metrics, files)


def padding_free(cfg: RunConfig, model: nn.Module, reference: Reference | None) -> dict[str, Any]:
    """PairwiseCollator options: pack each batch's sequences into rows of `cutoff_len` (no padding computed).

    On unless `packing: false`, where the log-probs take the fused path (`causal_lm_parts`) for the
    policy and a separate reference model alike; it needs that path to map packed tokens back to their
    sequences. FlashAttention-2, and sdpa run per packed sequence (`packed_attention`), keep sequences
    apart within one row, so the batch becomes a single row without padding.
    """
    models = [model] + ([reference.model] if reference is not None and reference.model is not None else [])
    if cfg.data.packing is False or any(causal_lm_parts(m) is None for m in models):
        return {}
    one_row = model.config._attn_implementation == "flash_attention_2" or all(
        [packed_attention.use(m) for m in models])  # a list: switch every model, not just up to the first refusal
    return {"pack_to": cfg.data.cutoff_len, "one_row": one_row}


@dataclass
class PairwiseObjective:
    """The loss of one batch of pairs (`PairwiseCollator`: B chosen rows, then B rejected rows).

    Args:
        loss_type: `pref_loss`: sigmoid, hinge, ipo, orpo or simpo.
        beta: `pref_beta`.
        ftx: `pref_ftx`, weight of an SFT term (mean token NLL of the chosen response). Default 0.0.
        label_smoothing: `dpo_label_smoothing` (sigmoid only). Default 0.0.
        simpo_gamma: `simpo_gamma` (simpo only). Default 0.5.
        reference: the reference model; required by sigmoid/hinge/ipo. Default None.
    """

    loss_type: str
    beta: float
    ftx: float = 0.0
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    reference: Reference | None = None

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        logps, lengths, mean_logits = scored_logps(model, batch)
        # IPO, ORPO and SimPO compare mean token log-probs, so long responses are not favoured
        use_mean = self.loss_type in MEAN_LOGPS_LOSSES
        scores = logps / lengths if use_mean else logps
        ref_scores = None
        if self.loss_type in REFERENCE_LOSSES:
            if self.reference is None:
                raise ValueError(f"pref_loss {self.loss_type!r} needs a reference model")
            ref_logps = self.reference.logps(model, batch)
            ref_scores = ref_logps / lengths if use_mean else ref_logps
        n = logps.size(0) // 2  # sequences, not rows: a packed batch holds several per row
        losses, chosen_rewards, rejected_rewards = pairwise_loss(
            self.loss_type, scores[:n], scores[n:],
            None if ref_scores is None else ref_scores[:n], None if ref_scores is None else ref_scores[n:],
            beta=self.beta, label_smoothing=self.label_smoothing, simpo_gamma=self.simpo_gamma)
        loss = losses.mean()
        sft_loss = -(logps[:n] / lengths[:n]).mean()
        if self.ftx > 0:
            loss = loss + self.ftx * sft_loss

        def total(values: Tensor) -> tuple[float, int]:
            return float(values.detach().sum()), n

        stats: Stats = {
            "rewards/chosen": total(chosen_rewards),
            "rewards/rejected": total(rejected_rewards),
            "rewards/accuracies": total((chosen_rewards > rejected_rewards).float()),
            "rewards/margins": total(chosen_rewards - rejected_rewards),
            "logps/chosen": total(scores[:n]),
            "logps/rejected": total(scores[n:]),
            "logits/chosen": total(mean_logits[:n]),
            "logits/rejected": total(mean_logits[n:]),
        }
        if self.ftx > 0 or self.loss_type == "orpo":
            stats["sft_loss"] = (float(sft_loss.detach()) * n, n)
        return loss, stats
