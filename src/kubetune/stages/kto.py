"""Kahneman-Tversky optimisation: learn from single responses labelled desirable or not (`kto_tag`).

Reads top to bottom: set up tokenizer, data (each row: a response, its `kto_tag`, and a KL partner —
the same prompt with another row's response) and policy; the reference; train with resume; save;
evaluate on held-out rows; predict (generate for the prompts of held-out desirable rows).

The KL reference point z is the batch mean of log π/π_ref over the KL partner rows (clamped at 0,
not back-propagated), estimated on each device's batch. Logged: `rewards/chosen` and
`rewards/rejected` (mean β·log π/π_ref of the desirable and undesirable rows), `kl` (z),
`logps/chosen`, `logps/rejected`, and `sft_loss` when `pref_ftx` > 0.

Why a transformers.Trainer subclass and not TRL's KTOTrainer: see `kubetune.stages.preference`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kubetune.config import RunConfig
from kubetune.losses.preference import kto_kl_estimate, kto_loss
from kubetune.stages import preference
from kubetune.stages.preference import KTOCollator, Reference, Stats, scored_logps
from kubetune.train.arguments import training_arguments
from kubetune.train.recipe import write_bad_rows
from kubetune.train.result import StageResult

logger = logging.getLogger(__name__)

PLOTTED = ("loss", "eval_loss", "rewards/chosen", "rewards/rejected", "kl")


def run(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run the configured `do_train` / `do_eval` / `do_predict` steps of a kto stage.

    Args:
        cfg: a validated config (`kubetune.config.load_config`); `cfg.train.output_dir` is required.
        callbacks: extra `TrainerCallback`s (trackers, tests that interrupt training).

    Returns:
        StageResult with the output directory, the metrics (train_loss, eval_rewards/chosen, eval_kl, ...)
        and the paths written.
    """
    out = Path(cfg.train.output_dir or "outputs")
    out.mkdir(parents=True, exist_ok=True)
    do_train = cfg.train.do_train is not False
    do_eval = cfg.train.do_eval or cfg.train.eval_strategy != "no"

    # --- setup ---
    s = preference.setup(cfg, do_train=do_train, evaluate=do_eval or cfg.train.do_predict)
    if do_train:
        check_class_balance(list(s.data.train["kto_tag"]), cfg.method.kto_chosen_weight,
                            cfg.method.kto_rejected_weight)
    args = training_arguments(cfg, out)
    m = cfg.method
    objective = KTOObjective(beta=m.pref_beta, desirable_weight=m.kto_chosen_weight,
                             undesirable_weight=m.kto_rejected_weight, ftx=m.pref_ftx,
                             reference=preference.load_reference(cfg, s.model_path, s.dtype, args.device))
    trainer = preference.build_trainer(s, args, objective, KTOCollator(preference.pad_id(s.tokenizer)),
                                       do_train=do_train, do_eval=do_eval, out=out, callbacks=callbacks)
    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    write_bad_rows(out, s.data, files)

    # --- train ---
    if do_train:
        train_metrics, train_files = preference.train_and_save(trainer, cfg, s, out, PLOTTED)
        metrics.update(train_metrics)
        files.update(train_files)

    # --- evaluate: rewards of held-out desirable and undesirable rows ---
    if do_eval and s.data.eval is not None:
        metrics.update(preference.evaluate(trainer, s.data.eval))

    # --- predict: generate for the prompts of held-out desirable rows ---
    if cfg.train.do_predict and s.data.eval is not None:
        ev = s.data.eval
        rows = [(ids, labels) for ids, labels, tag in zip(ev["input_ids"], ev["labels"], ev["kto_tag"], strict=True)
                if tag]
        if rows:
            metrics.update(preference.predict_preferred(trainer, cfg, s, rows, out))
            files["predictions"] = str(out / "generated_predictions.jsonl")
        else:
            logger.warning("do_predict: no desirable held-out rows to compare generations with")

    return preference.finish(out, metrics, files)


def check_class_balance(tags: list[bool], desirable_weight: float, undesirable_weight: float) -> float:
    """Warn when the weighted desirable:undesirable ratio is outside the KTO paper's [1, 4/3].

    Returns:
        λ_D·n_D / (λ_U·n_U) (inf when there are no undesirable rows).
    """
    n_d = sum(bool(t) for t in tags)
    n_u = len(tags) - n_d
    ratio = desirable_weight * n_d / (undesirable_weight * n_u) if n_u and undesirable_weight else float("inf")
    if not 1.0 <= ratio <= 4 / 3:
        logger.warning("kto: %d desirable and %d undesirable rows give λ_D·n_D / λ_U·n_U = %.2f; the KTO paper "
                       "recommends 1 to 4/3 — adjust kto_chosen_weight / kto_rejected_weight", n_d, n_u, ratio)
    return ratio


@dataclass
class KTOObjective:
    """The KTO loss of one batch (`KTOCollator`).

    Args:
        beta: `pref_beta`.
        desirable_weight: `kto_chosen_weight` (λ_D). Default 1.0.
        undesirable_weight: `kto_rejected_weight` (λ_U). Default 1.0.
        ftx: `pref_ftx`, weight of an SFT term (mean token NLL of the desirable rows). Default 0.0.
        reference: the reference model (KTO always has one). Default None = LoRA adapter disabled.
    """

    beta: float
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    ftx: float = 0.0
    reference: Reference | None = None

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Stats]:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        kl_ids, kl_mask, kl_labels = batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"]
        desirable = batch["kto_tag"].bool()
        logps, lengths, _ = scored_logps(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
        with torch.no_grad():  # z is a constant of the loss: no gradient through the KL rows
            kl_logps = scored_logps(model, {"input_ids": kl_ids, "attention_mask": kl_mask, "labels": kl_labels})[0]
        reference = self.reference or Reference(None)
        n = ids.size(0)
        ref_all = reference.logps(model, {"input_ids": torch.cat([ids, kl_ids]),
                                          "attention_mask": torch.cat([mask, kl_mask]),
                                          "labels": torch.cat([labels, kl_labels])})
        ref_logps, ref_kl_logps = ref_all[:n], ref_all[n:]
        kl = kto_kl_estimate(kl_logps, ref_kl_logps)
        losses, rewards = kto_loss(logps, ref_logps, desirable, kl, beta=self.beta,
                                   desirable_weight=self.desirable_weight,
                                   undesirable_weight=self.undesirable_weight)
        loss = losses.mean()
        nll = -(logps / lengths)
        n_d = int(desirable.sum())
        sft_loss = nll[desirable].mean() if n_d else nll.sum() * 0.0
        if self.ftx > 0:
            loss = loss + self.ftx * sft_loss

        def by_class(values: Tensor, keep: Tensor) -> tuple[float, int]:
            return float(values.detach()[keep].sum()), int(keep.sum())

        stats: Stats = {
            "rewards/chosen": by_class(rewards, desirable),
            "rewards/rejected": by_class(rewards, ~desirable),
            "logps/chosen": by_class(logps, desirable),
            "logps/rejected": by_class(logps, ~desirable),
            "kl": (float(kl), 1),
        }
        if self.ftx > 0:
            stats["sft_loss"] = (float(sft_loss.detach()) * n_d, n_d)
        return loss, stats
