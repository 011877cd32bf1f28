"""What the dpo and kto stages share: batches, log-probs, the reference model, the trainer, the recipe steps.

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

The reference model
-------------------
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

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments, set_seed

from kubetune.config import RunConfig
from kubetune.data.collator import DataCollatorForSupervised
from kubetune.data.encode import IGNORE_INDEX
from kubetune.data.packing import best_fit
from kubetune.data.pipeline import TokenizedData
from kubetune.data.setup import stage_data
from kubetune.evaluate.generate import predict
from kubetune.losses.causal_lm import sequence_logps_fused
from kubetune.model.adapters import prepare_for_training
from kubetune.model.loader import load_base_model, weight_dtype
from kubetune.tracking import JsonlLogCallback
from kubetune.train import recipe
from kubetune.train.result import StageResult

logger = logging.getLogger(__name__)

Stats = dict[str, tuple[float, int]]
"""Metric name → (sum over the examples of a batch, number of examples); averaged when logged."""
Objective = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, Stats]]
"""(policy, batch) → (loss to minimise, stats to log)."""


# --- log-probabilities ---


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of the log-probs of the labelled tokens of each row, and how many there are.

    Args:
        logits: [B, T, V] model outputs (cast to float32 here).
        labels: [B, T] token ids, `IGNORE_INDEX` (-100) where not scored (prompt, padding).

    Returns:
        (logps [B], token counts [B], at least 1 so a mean never divides by zero).
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t + 1
    mask = labels != IGNORE_INDEX
    targets = labels.masked_fill(~mask, 0).unsqueeze(-1)
    # row by row, so the [B, T, V] log-softmax is never held at once
    logps = torch.stack([row.gather(-1, target).squeeze(-1) - row.logsumexp(-1)
                         for row, target in zip(logits, targets, strict=True)])
    return (logps * mask).sum(-1), mask.sum(-1).clamp(min=1)


def mean_response_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean logit (over the vocabulary and the labelled tokens) of each row, detached: [B]."""
    mask = labels[:, 1:] != IGNORE_INDEX
    per_token = logits[:, :-1].detach().float().mean(-1)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def forward_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def scored_logps(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Summed log-probs of each sequence's labelled tokens, their count, and their mean logit (detached).

    Runs the output head only at labelled positions when the model allows it
    (`fused_loss.sequence_logps_fused`, which also reads neat-packed batches), else through the
    model's logits (one sequence per row). Call it under the trainer's autocast: the fused path
    calls the backbone directly.

    Args:
        model: the policy or a reference model.
        batch: `input_ids`, `labels` and `attention_mask`, or a packed batch (`PairwiseCollator(pack_to=...)`).
    """
    fused = sequence_logps_fused(extract_model_from_parallel(model), batch)
    if fused is not None:
        return fused
    if "sequence_index" in batch:
        raise ValueError("packed pairs need the fused log-probs path; this model computes more than head(hidden)")
    logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
    logps, counts = sequence_logps(logits, batch["labels"])
    return logps, counts, mean_response_logits(logits, batch["labels"])


# --- the reference model ---


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
        peft_model = extract_model_from_parallel(policy)
        if not hasattr(peft_model, "disable_adapter"):
            raise TypeError("a reference without a model needs a LoRA policy (PeftModel) whose adapter it disables")
        with peft_model.disable_adapter():
            return scored_logps(policy, batch)[0]


def load_reference(cfg: RunConfig, model_path: str, dtype: torch.dtype, device: torch.device | str) -> Reference:
    """The reference the config asks for (see the module docstring); call only for losses that use one.

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
        model = load_base_model(ref_args, dtype=dtype)
        # LoRA + not trainable merges the adapters into the base (or keeps one frozen on a quantised base)
        model = prepare_for_training(model, ref_args, m.model_copy(update={"finetuning_type": "lora"}),
                                     gradient_checkpointing=False, is_trainable=False)
        logger.info("reference: %s%s", m.ref_model, f" + {', '.join(adapters)}" if adapters else "")
    elif m.finetuning_type == "lora":
        logger.info("reference: the policy with its LoRA adapter disabled")
        return Reference(None)
    else:
        model = load_base_model(cfg.model, dtype=dtype, path=model_path)
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


# --- batches ---


@dataclass
class PairwiseCollator:
    """Batches ranking rows: the B chosen sequences, then the B rejected ones (sequence i pairs with B + i).

    Args:
        pad_token_id: id written into padded positions.
        pad_to_multiple_of: round the width up to a multiple of this. Default None = the longest row.
        pack_to: pack the 2B sequences into as few rows of at most this many tokens as fit (best fit,
            longest first), so no compute goes to padding. Each sequence restarts its position ids
            and sees only itself; `sequence_index` says which sequence each token belongs to. Default
            None = one sequence per row, padded to the longest.
        one_row: with `pack_to`, put every sequence into a single row instead (FlashAttention-2 reads
            packed sequences from the position ids of one row only). Default False.

    Returns (on call): `input_ids`, `labels` and `attention_mask` [2B, T]; packed: `input_ids`,
    `labels`, `position_ids` and `sequence_index` [R, T].
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    pack_to: int | None = None
    one_row: bool = False

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        rows = [{"input_ids": list(f[f"{side}_input_ids"]), "labels": list(f[f"{side}_labels"])}
                for side in ("chosen", "rejected") for f in features]
        if self.pack_to is None:
            pad = DataCollatorForSupervised(pad_token_id=self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
            return pad(rows)
        return self._packed(rows)

    def _packed(self, sequences: list[dict[str, list[int]]]) -> dict[str, Tensor]:
        lengths = [len(s["input_ids"]) for s in sequences]
        groups = [list(range(len(sequences)))] if self.one_row else best_fit(lengths, max(self.pack_to, *lengths))
        groups = [sorted(group) for group in groups]
        width = max(sum(lengths[i] for i in group) for group in groups)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": [], "sequence_index": []}
        for group in groups:
            ids, labels, positions, index = [], [], [], []
            for i in group:
                n = lengths[i]
                ids += sequences[i]["input_ids"]
                # the first label would be predicted from the previous sequence's last token: never scored
                labels += [IGNORE_INDEX, *sequences[i]["labels"][1:]]
                positions += range(n)
                index += [i] * n
            pad = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
            batch["position_ids"].append(positions + list(range(pad)))  # padding: a segment of its own
            batch["sequence_index"].append(index + [-1] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


@dataclass
class KTOCollator:
    """Pads KTO rows and their KL partners to one width.

    Args:
        pad_token_id: id written into padded positions.
        pad_to_multiple_of: round the width up to a multiple of this. Default None.

    Returns (on call): `input_ids`, `attention_mask`, `labels` [B, T]; `kl_input_ids`, `kl_attention_mask`,
    `kl_labels` [B, T]; `kto_tag` bool [B].
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        rows = [{"input_ids": f[f"{prefix}input_ids"], "labels": f[f"{prefix}labels"]}
                for prefix in ("", "kl_") for f in features]
        padded = DataCollatorForSupervised(pad_token_id=self.pad_token_id,
                                           pad_to_multiple_of=self.pad_to_multiple_of)(rows)
        n = len(features)
        batch = {key: value[:n] for key, value in padded.items()}
        batch.update({f"kl_{key}": value[n:] for key, value in padded.items()})
        batch["kto_tag"] = torch.tensor([bool(f["kto_tag"]) for f in features])
        return batch


# --- the trainer ---


class PreferenceTrainer(Trainer):
    """A `transformers.Trainer` whose loss is an objective over (policy, batch), with its stats logged.

    Training logs get the stats averaged since the previous log (`rewards/accuracies`, ...); evaluation
    returns them prefixed (`eval_rewards/accuracies`). Checkpoints, resume, schedules, mixed precision
    and distributed training are the Trainer's own.

    Args:
        objective: `(model, batch) -> (loss, stats)`.
        *args, **kwargs: as `transformers.Trainer`.
    """

    # The objective returns a per-batch mean: the Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, objective: Objective, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.model_accepts_loss_kwargs = False  # no token count to compute or pass: the model computes no loss
        self._stats: dict[str, dict[str, list[float]]] = {"train": defaultdict(lambda: [0.0, 0.0]),
                                                          "eval": defaultdict(lambda: [0.0, 0.0])}

    def compute_loss(self, model: nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Tensor | tuple[Tensor, None]:
        with self.accelerator.autocast():  # the fused log-probs bypass the model's (autocast-wrapped) forward
            loss, stats = self.objective(model, inputs)
        bucket = self._stats["train" if model.training else "eval"]
        for key, (total, count) in stats.items():
            bucket[key][0] += total
            bucket[key][1] += count
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Tensor, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

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
        totals = torch.tensor([bucket[k] for k in keys], dtype=torch.float32, device=self.args.device)
        totals = self.accelerator.reduce(totals, reduction="sum")  # every rank logs at the same steps
        bucket.clear()
        return {k: round(total / count, 6) for k, (total, count) in zip(keys, totals.tolist(), strict=True)
                if count > 0}


# --- the recipe's steps ---


@dataclass
class StageSetup:
    """What `setup` built. Attributes: tokenizer, template, data (TokenizedData), model (the policy),
    model_path (resolved model_name_or_path), dtype (weight dtype)."""

    tokenizer: Any
    template: Any
    data: TokenizedData
    model: Any
    model_path: str
    dtype: torch.dtype


def setup(cfg: RunConfig, *, do_train: bool, evaluate: bool) -> StageSetup:
    """Tokenizer, template, tokenised data and the policy, ready for a `PreferenceTrainer`.

    Args:
        cfg: the run config; `cfg.method.stage` decides the row form (dpo: pairs, kto: tagged rows).
        do_train: build the training split and make the policy trainable.
        evaluate: build the eval split (eval_dataset, or val_size of dataset).
    """
    s = stage_data(cfg, cfg.method.stage, train=do_train, evaluate=evaluate)
    model_path, tokenizer, template, data = s.model_path, s.tokenizer, s.template, s.data
    dtype = weight_dtype(cfg)  # a LoRA base is 16-bit under bf16/fp16 (see weight_dtype)
    set_seed(cfg.train.seed)  # adapter initialisation draws from the global RNG: same seed, same run
    model = load_base_model(cfg.model, dtype=dtype, path=model_path)
    # LoRA keeps its (last) adapter unmerged even to evaluate: the reference is the policy with it disabled
    lora = cfg.method.finetuning_type == "lora"
    model = prepare_for_training(model, cfg.model, cfg.method, is_trainable=do_train or lora,
                                 gradient_checkpointing=do_train and cfg.train.gradient_checkpointing)
    if not do_train:
        model.requires_grad_(False)
        model.eval()
    disable_dropout(model)
    return StageSetup(tokenizer, template, data, model, model_path, dtype)


def build_trainer(s: StageSetup, args: TrainingArguments, objective: Objective, collator: Any, *,
                  do_train: bool, do_eval: bool, out: Path, callbacks: list | None) -> PreferenceTrainer:
    """A `PreferenceTrainer` over the setup's splits, logging to `<out>/trainer_log.jsonl`."""
    return PreferenceTrainer(
        model=s.model,
        args=args,
        objective=objective,
        train_dataset=s.data.train if do_train else None,
        eval_dataset=s.data.eval if do_eval else None,
        data_collator=collator,
        processing_class=s.tokenizer,
        callbacks=[JsonlLogCallback(out), *(callbacks or [])],
    )


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def train_and_save(trainer: PreferenceTrainer, cfg: RunConfig, s: StageSetup, out: Path,
                   plotted: Sequence[str]) -> tuple[dict[str, float], dict[str, str]]:
    """`kubetune.train.recipe.train_and_save` for a preference stage's setup."""
    return recipe.train_and_save(trainer, cfg, s.data, out, tokenizer=s.tokenizer, plotted=plotted)


def evaluate(trainer: PreferenceTrainer, eval_set: Any) -> dict[str, float]:
    """Eval loss and preference metrics of held-out rows (`eval_rewards/accuracies`, ...), in eval_results.json."""
    metrics = trainer.evaluate(eval_set)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def predict_preferred(trainer: PreferenceTrainer, cfg: RunConfig, s: StageSetup, rows: list[tuple[list, list]],
                      out: Path) -> dict[str, float]:
    """Generate for the prompts of held-out rows and score against the preferred response (BLEU/ROUGE).

    Args:
        rows: (input_ids, labels) of the preferred responses (dpo: chosen; kto: desirable rows); the
            prompt is the masked prefix, the reference the labelled rest.
        out: the output dir; predictions go to `generated_predictions.jsonl`.
    """
    prompts, references = [], []
    for ids, labels in rows:
        start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        prompts.append(list(ids[:start]))
        references.append(s.tokenizer.decode(ids[start:], skip_special_tokens=True).strip())
    metrics = predict(trainer.model, s.tokenizer, {"prompt_ids": prompts, "reference": references},
                      cfg.generation, stop_token_ids=s.template.stop_token_ids(s.tokenizer),
                      batch_size=cfg.train.per_device_eval_batch_size,
                      output_file=out / "generated_predictions.jsonl")
    trainer.save_metrics("predict", metrics)
    return metrics


def finish(out: Path, metrics: dict[str, float], files: dict[str, str]) -> StageResult:
    """Write run_summary.json and return the StageResult."""
    (out / "run_summary.json").write_text(json.dumps({"metrics": metrics, "files": files}, indent=2) + "\n")
    return StageResult(output_dir=out, metrics=metrics, files=files)
