"""Direct preference optimisation and its family: `pref_loss` sigmoid (DPO), hinge, ipo, kto_pair, orpo, simpo;
with `pref_bco_weight` (a BCO term) and `ld_alpha` (LD-DPO's length desensitisation).

Reads top to bottom: set up tokenizer, data (chosen/rejected pairs) and policy; pick the reference
(none for orpo/simpo); decide the batch layout (`kubetune.train.layout.plan_pairs`); train with
resume; save the adapter or model, logs and plots; evaluate the preference metrics on held-out
pairs; predict (generate for held-out prompts, scored against the chosen response).

Logged every `logging_steps` (and with `eval_` on held-out pairs): `rewards/chosen`,
`rewards/rejected`, `rewards/accuracies` (share of pairs whose chosen reward is higher),
`rewards/margins`, `logps/chosen`, `logps/rejected` (summed response log-probs; means for
ipo/orpo/simpo), `logits/chosen`, `logits/rejected` (mean logit over the response tokens), and
`sft_loss` when an SFT term is in the loss (`pref_ftx` > 0, or orpo).

Why a transformers.Trainer subclass and not TRL's DPOTrainer: see `kubetune.train.preference_trainer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import Tensor, nn

from kubetune.config import RunConfig
from kubetune.data.collator import PairwiseCollator
from kubetune.data.setup import stage_data
from kubetune.evaluate.generate import predict_preferred
from kubetune.losses.causal_lm import scored_logps
from kubetune.losses.preference import MEAN_LOGPS_LOSSES, REFERENCE_LOSSES, RunningMean, pairwise_loss
from kubetune.model.loader import pad_token_id, weight_dtype
from kubetune.model.policy import load_preference_policy
from kubetune.model.reference import Reference, load_reference
from kubetune.train import recipe
from kubetune.train.arguments import training_arguments
from kubetune.train.layout import apply as apply_layout
from kubetune.train.layout import plan_pairs
from kubetune.train.preference_trainer import ObjectiveResult, Stats, preference_trainer
from kubetune.train.result import StageResult, finish

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
    steps = recipe.start(cfg)
    out = steps.out

    # --- setup ---
    s = stage_data(cfg, "dpo", train=steps.train, evaluate=steps.needs_eval_split)
    args = training_arguments(cfg, out)  # before the model: under ZeRO-3 it loads partitioned (see its docstring)
    model = load_preference_policy(cfg, s.model_path, train=steps.train)
    m = cfg.method
    reference = load_reference(cfg, s.model_path, weight_dtype(cfg), args.device) if m.pref_loss in REFERENCE_LOSSES \
        else None
    models = {"policy": model, **({"reference": reference.model} if reference and reference.model is not None else {})}
    layout = plan_pairs(cfg, models)
    apply_layout(layout, models)
    objective = PairwiseObjective(m.pref_loss, beta=m.pref_beta, ftx=m.pref_ftx,
                                  label_smoothing=m.dpo_label_smoothing, simpo_gamma=m.simpo_gamma,
                                  bco_weight=m.pref_bco_weight, ld_alpha=m.ld_alpha, reference=reference)
    collator = PairwiseCollator(pad_token_id(s.tokenizer), pack_to=layout.pack_to, one_row=layout.one_row)
    trainer = preference_trainer(model, s.tokenizer, s.data, args, objective, collator, do_train=steps.train,
                                 do_eval=steps.eval, out=out, callbacks=callbacks)
    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    recipe.write_bad_rows(out, s.data, files)

    # --- train ---
    if steps.train:
        train_metrics, train_files = recipe.train_and_save(trainer, cfg, s.data, out, tokenizer=s.tokenizer,
                                                           plotted=PLOTTED)
        metrics.update(train_metrics)
        files.update(train_files)

    # --- evaluate: preference metrics on held-out pairs ---
    if steps.eval and s.data.eval is not None:
        metrics.update(recipe.evaluate(trainer, s.data.eval))

    # --- predict: generate for held-out prompts, scored against the chosen response ---
    if steps.generates and s.data.eval is not None:
        rows = list(zip(s.data.eval["chosen_input_ids"], s.data.eval["chosen_labels"], strict=True))
        predict_metrics = predict_preferred(trainer.model, s.tokenizer, rows, cfg.generation,
                                            batch_size=cfg.train.per_device_eval_batch_size,
                                            output_file=out / "generated_predictions.jsonl",
                                            stop_token_ids=s.template.stop_token_ids(s.tokenizer))
        trainer.save_metrics("predict", predict_metrics)
        metrics.update(predict_metrics)
        files["predictions"] = str(out / "generated_predictions.jsonl")

    return finish(out, metrics, files, layout.as_dict(), steps.world)


@dataclass
class PairwiseObjective:
    """The loss of one batch of pairs (`PairwiseCollator`: B chosen rows, then B rejected rows).

    Args:
        loss_type: `pref_loss`: sigmoid, hinge, ipo, orpo or simpo.
        beta: `pref_beta`.
        ftx: `pref_ftx`, weight of an SFT term (mean token NLL of the chosen response). Default 0.0.
        label_smoothing: `dpo_label_smoothing` (sigmoid only). Default 0.0.
        simpo_gamma: `simpo_gamma` (simpo only). Default 0.5.
        bco_weight: `pref_bco_weight`, weight of a BCO term against a running reward baseline (reference losses
            only). Default 0.0.
        ld_alpha: `ld_alpha`, LD-DPO's weight of the policy's response tokens beyond the pair's shared length.
            Default None (off).
        reference: the reference model; required by sigmoid/hinge/ipo/kto_pair. Default None.
    """

    loss_type: str
    beta: float
    ftx: float = 0.0
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    bco_weight: float = 0.0
    ld_alpha: float | None = None
    reference: Reference | None = None
    bco_baseline: RunningMean = field(default_factory=RunningMean)

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> ObjectiveResult:
        logps, lengths, mean_logits = scored_logps(model, batch, self.ld_alpha)  # the reference's: never LD
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
            beta=self.beta, label_smoothing=self.label_smoothing, simpo_gamma=self.simpo_gamma,
            bco_weight=self.bco_weight, bco_baseline=self.bco_baseline)
        loss = losses.mean()
        sft_loss = -(logps[:n] / lengths[:n]).mean()
        if self.ftx > 0:
            loss = loss + self.ftx * sft_loss

        stats: Stats = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": scores[:n],
            "logps/rejected": scores[n:],
            "logits/chosen": mean_logits[:n],
            "logits/rejected": mean_logits[n:],
        }
        if self.ftx > 0 or self.loss_type == "orpo":
            stats["sft_loss"] = -(logps[:n] / lengths[:n])
        return ObjectiveResult(loss, stats)
