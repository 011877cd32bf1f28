"""One `transformers.Trainer` for every objective over pairs or tagged rows: dpo's family, kto, rm.

Why our own trainer, not TRL's (trl 1.16)
-----------------------------------------
We checked TRL first. Its `DPOTrainer` has sigmoid/hinge/ipo (and many more), but:

- it does not take our pre-tokenised rows: `_prepare_dataset` always re-extracts the prompt from
  text and re-tokenises it, so `chosen_input_ids`/`chosen_labels` with LLaMA-Factory's masking
  (and our content-hashed data cache) would have to be converted back and re-derived;
- ORPO and SimPO are not losses of it but separate trainers in `trl.experimental` (`ORPOTrainer`,
  `CPOTrainer` with `loss_type="simpo"`), each with its own text tokenisation and collator;
- its `sigmoid` loss ignores `label_smoothing` (conservative DPO), which `dpo_label_smoothing` needs;
- it refuses to start without a `train_dataset`, which our eval-only path (`do_train: false`) lacks;
- `KTOTrainer` builds KL partners by rotating completions inside each batch (it needs sequential
  sampling and a batch above one), while our rows carry their KL partner already.

Adapting all that would cost more than writing what we need: a small `transformers.Trainer` subclass
(`PreferenceTrainer`, ~60 lines) runs an *objective* (`PairwiseObjective` in dpo.py, `KTOObjective` in
kto.py, ~50 lines each) over pure loss functions (`kubetune.losses.preference`, unit-tested on hand-computed
values), with the same checkpointing, resume, logging and evaluation as sft. TRL stays the reference
for the formulas and metric names (`rewards/accuracies`, ...), which we keep.
The reward model runs on the same trainer (`RewardObjective` in rm.py, with a saver for its value
head), so every preference-like stage logs, evaluates and checkpoints alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments

from kubetune.data.pipeline import TokenizedData
from kubetune.tracking import JsonlLogCallback

Stats = dict[str, Tensor]
"""Metric name → one value per example of the batch ([n], NaN where an example does not count, e.g. the
other class of a KTO batch); averaged over the counted examples of every rank when logged."""


class ObjectiveResult(NamedTuple):
    """What an objective computes for one batch.

    Attributes:
        loss: the scalar to minimise (a mean over the batch).
        stats: per-example values to log (`Stats`), e.g. `rewards/accuracies`.
        scores: per-example scores `predict` returns (the reward model's [B, 2] chosen/rejected
            rewards); None when the objective has none. Default None.
    """

    loss: Tensor
    stats: Stats
    scores: Tensor | None = None


Objective = Callable[[nn.Module, dict[str, Tensor]], ObjectiveResult]
"""(model, batch) → ObjectiveResult."""


class Saver(Protocol):
    """Writes and restores a model the Trainer cannot save as a `PreTrainedModel` (a base plus a value head)."""

    def save(self, model: nn.Module, output_dir: str) -> None: ...

    def load(self, model: nn.Module, checkpoint_dir: str) -> None: ...


class PreferenceTrainer(Trainer):
    """A `transformers.Trainer` whose loss is an objective over (policy, batch), with its stats logged.

    Training logs get the stats averaged since the previous log (`rewards/accuracies`, ...); evaluation
    returns them prefixed (`eval_rewards/accuracies`). Checkpoints, resume, schedules, mixed precision
    and distributed training are the Trainer's own.

    Args:
        objective: `(model, batch) -> ObjectiveResult` (loss, stats, and optionally per-example scores,
            which `predict` returns as its predictions).
        saver: how checkpoints and the final model are written and restored, when not the Trainer's own
            way (the reward model's value head: `kubetune.model.reward.RewardModelSaver`). Default None.
        *args, **kwargs: as `transformers.Trainer`.
    """

    # The objective returns a per-batch mean: the Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, objective: Objective, saver: Saver | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.saver = saver
        self.model_accepts_loss_kwargs = False  # no token count to compute or pass: the model computes no loss
        # mode → metric → [sum, count] on the device: summed without a host sync per step, reduced when logged
        self._stats: dict[str, dict[str, Tensor]] = {"train": {}, "eval": {}}

    def compute_loss(self, model: nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Tensor | tuple[Tensor, None]:
        with self.accelerator.autocast():  # the fused log-probs bypass the model's (autocast-wrapped) forward
            result = self.objective(model, inputs)
        bucket = self._stats["train" if model.training else "eval"]
        for key, values in result.stats.items():
            values = values.detach().float()[: self._counted(len(values), training=model.training)]
            counted = ~torch.isnan(values)
            total = torch.stack([torch.where(counted, values, 0.0).sum(), counted.sum().float()])
            bucket[key] = bucket[key] + total if key in bucket else total
        return (result.loss, result.scores) if return_outputs else result.loss

    def _counted(self, n: int, *, training: bool) -> int:
        """How many of this rank's `n` examples count: all, but in the last batch of a distributed evaluation.

        There accelerate tops up every rank's share to a whole batch with repeats of the first examples;
        the last global batch holds `remainder` real ones, in rank order (what `gather_for_metrics` keeps).
        """
        state = self.accelerator.gradient_state
        if training or not state.end_of_dataloader or state.remainder <= 0:
            return n
        return max(0, min(n, state.remainder - self.accelerator.process_index * n))

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, scores = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only or scores is None:
            return loss.detach(), None, None
        # the Trainer gathers predictions with labels; an objective's scores have none to compare with
        return loss.detach(), scores.float(), torch.zeros(len(scores), dtype=torch.long, device=scores.device)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        output.metrics.update({f"{prefix}_{key}": value for key, value in self._flush("eval").items()})
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (not the eval one, not the end-of-training summary)
            logs.update(self._flush("train"))
        super().log(logs, start_time)

    def _flush(self, mode: str) -> dict[str, float]:
        bucket = self._stats[mode]
        if not bucket:
            return {}
        keys = sorted(bucket)
        totals = torch.stack([bucket[k].to(self.args.device) for k in keys])
        totals = self.accelerator.reduce(totals, reduction="sum")  # every rank logs at the same steps
        bucket.clear()
        return {k: round(total / count, 6) for k, (total, count) in zip(keys, totals.tolist(), strict=True)
                if count > 0}

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.saver is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return None
        self.saver.save(self.accelerator.unwrap_model(self.model), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, Path(output_dir) / "training_args.bin")
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.saver is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.saver.load(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)
        return None


def preference_trainer(model: nn.Module, tokenizer: Any, data: TokenizedData, args: TrainingArguments,
                       objective: Objective, collator: Any, *, do_train: bool, do_eval: bool, out: Path,
                       callbacks: list | None = None, saver: Saver | None = None) -> PreferenceTrainer:
    """A `PreferenceTrainer` over a stage's splits, logging to `<out>/trainer_log.jsonl`.

    Args:
        model: the policy (or reward model).
        tokenizer: saved with every checkpoint.
        data: the tokenised splits (`train` used when `do_train`, `eval` when `do_eval`).
        args: `kubetune.train.arguments.training_arguments(cfg, out)`.
        objective: the stage's loss (`PairwiseObjective`, `KTOObjective`, `RewardObjective`).
        collator: the stage's batches (`kubetune.data.collator`).
        do_train, do_eval: which splits the Trainer gets.
        out: the output folder.
        callbacks: extra `TrainerCallback`s. Default None.
        saver: see `PreferenceTrainer`. Default None.
    """
    return PreferenceTrainer(
        model=model,
        args=args,
        objective=objective,
        saver=saver,
        train_dataset=data.train if do_train else None,
        eval_dataset=data.eval if do_eval else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(out), *(callbacks or [])],
    )
