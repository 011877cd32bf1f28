"""Kahneman-Tversky optimisation: learn from single responses labelled desirable or not (`kto_tag`).

Reads top to bottom: set up tokenizer, data (each row: a response, its `kto_tag`, and a KL partner —
the same prompt with another row's response) and policy; the reference; train with resume; save;
evaluate on held-out rows; predict (generate for the prompts of held-out desirable rows).

The KL reference point z is the batch mean of log π/π_ref over the KL partner rows (clamped at 0,
not back-propagated), estimated on each device's batch. Logged: `rewards/chosen` and
`rewards/rejected` (mean β·log π/π_ref of the desirable and undesirable rows), `kl` (z),
`logps/chosen`, `logps/rejected`, and `sft_loss` when `pref_ftx` > 0.

Why a transformers.Trainer subclass and not TRL's KTOTrainer: see `kubetune.train.preference_trainer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kubetune.config import RunConfig
from kubetune.data.collator import KTOCollator
from kubetune.data.setup import stage_data
from kubetune.evaluate.generate import predict_preferred
from kubetune.losses.causal_lm import scored_logps
from kubetune.losses.preference import kto_kl_estimate, kto_loss
from kubetune.model.loader import pad_token_id, weight_dtype
from kubetune.model.policy import load_preference_policy
from kubetune.model.reference import Reference, load_reference
from kubetune.train import recipe
from kubetune.train.arguments import training_arguments
from kubetune.train.layout import apply as apply_layout
from kubetune.train.layout import plan_padded
from kubetune.train.preference_trainer import ObjectiveResult, Stats, preference_trainer
from kubetune.train.result import StageResult, finish

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
    steps = recipe.start(cfg)
    out = steps.out

    # --- setup ---
    s = stage_data(cfg, "kto", train=steps.train, evaluate=steps.needs_eval_split)
    if steps.train:
        check_class_balance(list(s.data.train["kto_tag"]), cfg.method.kto_chosen_weight,
                            cfg.method.kto_rejected_weight)
    args = training_arguments(cfg, out)  # before the model: under ZeRO-3 it loads partitioned (see its docstring)
    model = load_preference_policy(cfg, s.model_path, train=steps.train)
    m = cfg.method
    reference = load_reference(cfg, s.model_path, weight_dtype(cfg), args.device)
    models = {"policy": model, **({"reference": reference.model} if reference.model is not None else {})}
    layout = plan_padded(models, "KTO rows are padded with their KL partners to one width")
    apply_layout(layout, models)
    objective = KTOObjective(beta=m.pref_beta, desirable_weight=m.kto_chosen_weight,
                             undesirable_weight=m.kto_rejected_weight, ftx=m.pref_ftx, reference=reference)
    trainer = preference_trainer(model, s.tokenizer, s.data, args, objective, KTOCollator(pad_token_id(s.tokenizer)),
                                 do_train=steps.train, do_eval=steps.eval, out=out, callbacks=callbacks)
    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    recipe.write_bad_rows(out, s.data, files)

    # --- train ---
    if steps.train:
        train_metrics, train_files = recipe.train_and_save(trainer, cfg, s.data, out, tokenizer=s.tokenizer,
                                                           plotted=PLOTTED)
        metrics.update(train_metrics)
        files.update(train_files)

    # --- evaluate: rewards of held-out desirable and undesirable rows ---
    if steps.eval and s.data.eval is not None:
        metrics.update(recipe.evaluate(trainer, s.data.eval))

    # --- predict: generate for the prompts of held-out desirable rows ---
    if steps.generates and s.data.eval is not None:
        ev = s.data.eval
        rows = [(ids, labels) for ids, labels, tag in zip(ev["input_ids"], ev["labels"], ev["kto_tag"], strict=True)
                if tag]
        if rows:
            predict_metrics = predict_preferred(trainer.model, s.tokenizer, rows, cfg.generation,
                                                batch_size=cfg.train.per_device_eval_batch_size,
                                                output_file=out / "generated_predictions.jsonl",
                                                stop_token_ids=s.template.stop_token_ids(s.tokenizer))
            trainer.save_metrics("predict", predict_metrics)
            metrics.update(predict_metrics)
            files["predictions"] = str(out / "generated_predictions.jsonl")
        else:
            logger.warning("do_predict: no desirable held-out rows to compare generations with")

    return finish(out, metrics, files, layout.as_dict(), steps.world)


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

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> ObjectiveResult:
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

        def only(values: Tensor, keep: Tensor) -> Tensor:  # NaN: the row is of the other class
            return torch.where(keep, values.detach().float(), float("nan"))

        stats: Stats = {
            "rewards/chosen": only(rewards, desirable),
            "rewards/rejected": only(rewards, ~desirable),
            "logps/chosen": only(logps, desirable),
            "logps/rejected": only(logps, ~desirable),
            "kl": kl.expand(n),  # the batch's (all ranks') estimate, once per row: logged as the mean over batches
        }
        if self.ftx > 0:
            stats["sft_loss"] = only(nll, desirable)
        return ObjectiveResult(loss, stats)
