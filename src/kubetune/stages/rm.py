"""Reward modelling (`stage: rm`): a scalar head learns to score the chosen response above the rejected one.

Reads top to bottom: set up tokenizer, template, pairs and model (base + LoRA / freeze / full + a value
head); train on `-log σ(r_chosen − r_rejected)`, each reward read at the sequence's last non-padding token
(resuming from the last checkpoint, value head included); save the adapter or weights, the value head,
the tokenizer and reward_model.json (layout in `kubetune.model.reward`); evaluate pair accuracy; write
per-pair scores. With `do_train: false` (`kubetune eval`) it loads a trained reward model and evaluates it.

Built on transformers' Trainer rather than TRL's RewardTrainer: TRL's expects an
`AutoModelForSequenceClassification` (it reads `outputs.logits` and calls `add_model_tags`), applies PEFT
itself, and saves through `save_pretrained`, so our value head would be neither saved nor restored with
its checkpoints. A Trainer subclass with a pairwise loss, a pairwise collator and a save/load pair that
knows the head is smaller than adapting TRL to all three.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import EvalPrediction, Trainer, set_seed

from kubetune.config import RunConfig
from kubetune.data.collator import DataCollatorForSupervised
from kubetune.data.encode import IGNORE_INDEX
from kubetune.data.setup import stage_data
from kubetune.model.adapters import prepare_for_training
from kubetune.model.loader import load_base_model, weight_dtype
from kubetune.model.reward import (
    RewardModelInfo,
    find_trained_reward_model,
    load_reward_model,
    load_reward_weights,
    reward_model_type_of,
    save_reward_model,
    sequence_scores,
)
from kubetune.model.value_head import ModelWithValueHead
from kubetune.tracking import JsonlLogCallback
from kubetune.train.arguments import training_arguments
from kubetune.train.recipe import train_and_save, write_bad_rows
from kubetune.train.result import StageResult

logger = logging.getLogger(__name__)

PLOTTED = ("loss", "eval_loss", "accuracy", "eval_accuracy")


def run(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run the configured `do_train` / `do_eval` / `do_predict` steps of a reward-model stage.

    Args:
        cfg: a validated config (`kubetune.config.load_config`) with `stage: rm`.
        callbacks: extra `TrainerCallback`s (trackers, tests that interrupt training).

    Returns:
        StageResult with the output directory, the merged metrics (train_loss, eval_accuracy,
        predict_accuracy, ...) and paths of what was written.
    """
    out = Path(cfg.train.output_dir or "outputs")
    out.mkdir(parents=True, exist_ok=True)
    do_train = cfg.train.do_train is not False
    do_eval = cfg.train.do_eval or cfg.train.eval_strategy != "no"
    trained = None if do_train else _trained_reward_model(cfg)

    # --- setup ---
    s = stage_data(cfg, "rm", train=do_train, evaluate=do_eval or cfg.train.do_predict)
    model_path, tokenizer, data = s.model_path, s.tokenizer, s.data
    set_seed(cfg.train.seed)  # adapter and value-head initialisation draw from the global RNG
    if trained is None:
        model = build_reward_model(cfg, model_path)
        info = RewardModelInfo(base_model=cfg.model.model_name_or_path, finetuning_type=cfg.method.finetuning_type,
                               base_adapters=_merged_adapters(cfg), template=cfg.data.template)
    else:
        logger.info("evaluating the reward model in %s", trained)
        model = load_reward_model(str(trained), base_model_args=cfg.model,
                                  reward_model_type=reward_model_type_of(trained) or "lora",
                                  quantization_bit=cfg.model.quantization_bit)
        info = RewardModelInfo.load(trained) or RewardModelInfo(cfg.model.model_name_or_path, "full")

    trainer = PairwiseTrainer(
        model=model,
        args=training_arguments(cfg, out),
        info=info,
        train_dataset=data.train if do_train else None,
        eval_dataset=data.eval if do_eval else None,
        data_collator=PairwiseCollator(
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        processing_class=tokenizer,
        compute_metrics=pair_metrics,
        callbacks=[JsonlLogCallback(out), *(callbacks or [])],
    )
    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    write_bad_rows(out, data, files)

    # --- train ---
    if do_train:
        # save_model writes the adapter or weights, value head, tokenizer and reward_model.json
        train_metrics, train_files = train_and_save(trainer, cfg, data, out, plotted=PLOTTED)
        metrics.update(train_metrics)
        files.update(train_files)

    # --- evaluate ---
    if do_eval and data.eval is not None:
        eval_metrics = trainer.evaluate(data.eval)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # --- predict ---
    if cfg.train.do_predict and data.eval is not None:
        prediction = trainer.predict(data.eval, metric_key_prefix="predict")
        path = write_pair_scores(data.eval, prediction.predictions, tokenizer, out / "generated_predictions.jsonl")
        trainer.save_metrics("predict", prediction.metrics)
        metrics.update(prediction.metrics)
        files["predictions"] = str(path)

    (out / "run_summary.json").write_text(json.dumps({"metrics": metrics, "files": files}, indent=2) + "\n")
    return StageResult(output_dir=out, metrics=metrics, files=files)


def build_reward_model(cfg: RunConfig, model_path: str) -> ModelWithValueHead:
    """The base with `finetuning_type` applied (LoRA / freeze / full) and a fresh, trainable value head."""
    dtype = weight_dtype(cfg)  # a LoRA base is 16-bit under bf16/fp16 (see weight_dtype)
    model = load_base_model(cfg.model, dtype=dtype, path=model_path)
    model = prepare_for_training(model, cfg.model, cfg.method, is_trainable=True,
                                 gradient_checkpointing=cfg.train.gradient_checkpointing)
    reward = ModelWithValueHead(model)
    # The pairwise loss is blind to a constant offset, so the bias's gradient is rounding noise, which Adam
    # would scale up to full-size steps: the offset would drift at random. It stays at 0.
    reward.v_head.summary.bias.requires_grad_(False)
    return reward


def _merged_adapters(cfg: RunConfig) -> list[str]:
    """Adapters `prepare_for_training` merged into the base; the last one is the adapter being trained."""
    adapters = cfg.model.adapter_name_or_path or []
    return list(adapters[:-1]) if cfg.method.finetuning_type == "lora" else []


def _trained_reward_model(cfg: RunConfig) -> Path:
    found = find_trained_reward_model(cfg.model, cfg.train.output_dir, fetch=True)
    if found is None:
        raise FileNotFoundError(
            "evaluating a reward model (do_train: false) needs a trained one, but neither adapter_name_or_path, "
            f"output_dir ({cfg.train.output_dir}) nor model_name_or_path holds value_head.safetensors: train it "
            "first (kubetune train <rm config>), or set adapter_name_or_path to an rm output_dir")
    return found


# --- batches, loss and metrics ---


@dataclass
class PairwiseCollator:
    """Pads the chosen and rejected sequences of B pairs into one batch of 2B rows (right padding).

    Rows 0..B-1 are the chosen sequences, rows B..2B-1 the rejected ones, in the same pair order, so one
    forward pass scores both and `scores.chunk(2)` splits them again.

    Args:
        pad_token_id: id written into padded positions (masked out by the attention mask).
        pad_to_multiple_of: round the padded length up to a multiple of this (default None: the longest row).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": feature[f"{side}_input_ids"]} for side in ("chosen", "rejected") for feature in features]
        batch = DataCollatorForSupervised(pad_token_id=self.pad_token_id,
                                          pad_to_multiple_of=self.pad_to_multiple_of)(rows)
        # no labels: the reward loss does not read them, and Trainer would take their count for the loss's
        # normaliser under gradient accumulation
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def pair_scores(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards [B] each, float32: the value at each sequence's last non-padding token."""
    scores = sequence_scores(model, inputs["input_ids"], inputs["attention_mask"])
    chosen, rejected = scores.chunk(2)
    return chosen, rejected


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood that chosen beats rejected, averaged over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


def pair_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """`accuracy`: share of pairs whose chosen score is strictly above the rejected one; `margin`: mean gap."""
    scores = torch.as_tensor(prediction.predictions)
    gap = scores[:, 0] - scores[:, 1]
    return {"accuracy": (gap > 0).float().mean().item(), "margin": gap.mean().item()}


class PairwiseTrainer(Trainer):
    """Trainer for a `ModelWithValueHead` on `PairwiseCollator` batches.

    Logs `accuracy` and `margin` next to the training `loss` (over the pairs seen since the previous log),
    and `eval_accuracy` / `eval_margin` (via `pair_metrics`) when evaluating. Checkpoints and the final
    save hold the adapter or weights, the value head and reward_model.json; resuming restores all of them.

    Args:
        info: written as reward_model.json on every save.
        *args, **kwargs: as for `transformers.Trainer`; pass `compute_metrics=pair_metrics`.
    """

    def __init__(self, *args: Any, info: RewardModelInfo, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info = info
        # The loss is a mean over pairs: Trainer must divide it by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self._since_log = torch.zeros(3, device=self.args.device)  # correct pairs, pairs, summed margin

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        chosen, rejected = pair_scores(model, inputs)
        loss = pairwise_loss(chosen, rejected)
        with torch.no_grad():
            gap = (chosen - rejected).detach()
            self._since_log += torch.stack([(gap > 0).sum().float(), gap.new_tensor(gap.numel()), gap.sum()])
        return (loss, torch.stack([chosen, rejected], dim=1)) if return_outputs else loss

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Any, Any, Any]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            chosen, rejected = pair_scores(model, inputs)
            loss = pairwise_loss(chosen, rejected).detach()
        if prediction_loss_only:
            return loss, None, None
        scores = torch.stack([chosen, rejected], dim=1).float()
        # the label of a pair is the index of its preferred response in `scores`: always 0 (chosen first)
        return loss, scores, torch.zeros(len(chosen), dtype=torch.long, device=scores.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log event (evaluation logs carry eval_loss)
            correct, pairs, margin = self.accelerator.reduce(self._since_log, "sum").tolist()
            if pairs:
                logs["accuracy"] = round(correct / pairs, 4)
                logs["margin"] = round(margin / pairs, 4)
            self._since_log.zero_()
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer would save a non-PreTrainedModel as one state dict (every base weight, tied ones breaking
        safetensors); save the PEFT or base part the usual way plus the head instead."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        save_reward_model(self.accelerator.unwrap_model(self.model), output_dir, self.info)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, Path(output_dir) / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        logger.info("restoring the reward model (weights and value head) from %s", resume_from_checkpoint)
        load_reward_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)


def write_pair_scores(rows: Any, scores: Any, tokenizer: Any, path: Path) -> Path:
    """`generated_predictions.jsonl`: one line per pair with its prompt, both responses and both scores.

    Args:
        rows: the eval split (chosen/rejected input ids and labels; the prompt is the masked prefix).
        scores: [N, 2] array of (chosen, rejected) scores, in row order.
        tokenizer: to decode the text.
        path: the file to write.
    """
    with path.open("w", encoding="utf-8") as handle:
        for row, (chosen, rejected) in zip(rows, scores.tolist(), strict=True):
            prompt, chosen_text = _split_prompt(row["chosen_input_ids"], row["chosen_labels"], tokenizer)
            _, rejected_text = _split_prompt(row["rejected_input_ids"], row["rejected_labels"], tokenizer)
            line = {"prompt": prompt, "chosen_response": chosen_text, "rejected_response": rejected_text,
                    "chosen": round(chosen, 6), "rejected": round(rejected, 6), "correct": chosen > rejected}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def _split_prompt(input_ids: list[int], labels: list[int], tokenizer: Any) -> tuple[str, str]:
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return tokenizer.decode(input_ids[:start]), tokenizer.decode(input_ids[start:])
