"""Reward modelling (`stage: rm`): a scalar head learns to score the chosen response above the rejected one.

Reads top to bottom: set up tokenizer, template, pairs and model (base + LoRA / freeze / full + a value
head); train on `-log σ(r_chosen − r_rejected)`, each reward read at the sequence's last non-padding token
(resuming from the last checkpoint, value head included); save the adapter or weights, the value head,
the tokenizer and reward_model.json (layout in `kubetune.model.reward`); evaluate pair accuracy; write
per-pair scores. With `do_train: false` (`kubetune eval`) it loads a trained reward model and evaluates it.

Built on our preference trainer (`kubetune.train.preference_trainer`, shared with dpo and kto) rather
than TRL's RewardTrainer: TRL's expects an `AutoModelForSequenceClassification` (it reads
`outputs.logits` and calls `add_model_tags`), applies PEFT itself, and saves through `save_pretrained`,
so our value head would be neither saved nor restored with its checkpoints. An objective
(`RewardObjective`), the shared pairwise collator and a saver that knows the head
(`kubetune.model.reward.RewardModelSaver`) are smaller than adapting TRL to all three.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubetune.config import RunConfig
from kubetune.data.collator import PairwiseCollator
from kubetune.data.setup import stage_data
from kubetune.evaluate.generate import split_prompt
from kubetune.losses.preference import bradley_terry_loss
from kubetune.model.loader import pad_token_id
from kubetune.model.policy import load_policy
from kubetune.model.reward import (
    RewardModelInfo,
    RewardModelSaver,
    find_trained_reward_model,
    load_reward_model,
    reward_model_type_of,
    sequence_scores,
)
from kubetune.model.value_head import ModelWithValueHead
from kubetune.train import recipe
from kubetune.train.arguments import training_arguments
from kubetune.train.layout import apply as apply_layout
from kubetune.train.layout import plan_padded
from kubetune.train.preference_trainer import ObjectiveResult, Stats, preference_trainer
from kubetune.train.result import StageResult, finish

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
    steps = recipe.start(cfg)
    out = steps.out
    trained = None if steps.train else _trained_reward_model(cfg)

    # --- setup ---
    s = stage_data(cfg, "rm", train=steps.train, evaluate=steps.needs_eval_split)
    tokenizer, data = s.tokenizer, s.data
    args = training_arguments(cfg, out)  # before the model, as every stage does (see its docstring)
    if trained is None:
        model = build_reward_model(cfg, s.model_path)
        info = RewardModelInfo(base_model=cfg.model.model_name_or_path, finetuning_type=cfg.method.finetuning_type,
                               base_adapters=_merged_adapters(cfg), template=cfg.data.template)
    else:
        logger.info("evaluating the reward model in %s", trained)
        model = load_reward_model(str(trained), base_model_args=cfg.model,
                                  reward_model_type=reward_model_type_of(trained) or "lora",
                                  quantization_bit=cfg.model.quantization_bit)
        info = RewardModelInfo.load(trained) or RewardModelInfo(cfg.model.model_name_or_path, "full")
    layout = plan_padded({"policy": model}, "a reward is read at each sequence's last non-padding token")
    apply_layout(layout, {"policy": model})
    collator = PairwiseCollator(pad_token_id(tokenizer), pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    # save_model writes the adapter or weights, value head, tokenizer and reward_model.json
    trainer = preference_trainer(model, tokenizer, data, args, RewardObjective(), collator,
                                 do_train=steps.train, do_eval=steps.eval, out=out, callbacks=callbacks,
                                 saver=RewardModelSaver(info))
    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    recipe.write_bad_rows(out, data, files)

    # --- train ---
    if steps.train:
        train_metrics, train_files = recipe.train_and_save(trainer, cfg, data, out, plotted=PLOTTED)
        metrics.update(train_metrics)
        files.update(train_files)

    # --- evaluate: pair accuracy and margin on held-out pairs ---
    if steps.eval and data.eval is not None:
        metrics.update(recipe.evaluate(trainer, data.eval))

    # --- predict: each held-out pair's two scores ---
    if steps.predict and data.eval is not None:
        prediction = trainer.predict(data.eval, metric_key_prefix="predict")  # every rank scores a share
        path = out / "generated_predictions.jsonl"
        if steps.world.is_main:  # the scores of all ranks, gathered
            write_pair_scores(data.eval, prediction.predictions, tokenizer, path)
        trainer.save_metrics("predict", prediction.metrics)
        metrics.update(prediction.metrics)
        files["predictions"] = str(path)

    return finish(out, metrics, files, layout.as_dict(), steps.world)


def build_reward_model(cfg: RunConfig, model_path: str) -> ModelWithValueHead:
    """The base with `finetuning_type` applied (LoRA / freeze / full) and a fresh, trainable value head."""
    model, _ = load_policy(cfg, model_path, trainable=True)
    reward = ModelWithValueHead(model)  # built after load_policy's set_seed: the head's initialisation is seeded
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


# --- the objective ---


def pair_scores(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards [B] each, float32: the value at each sequence's last non-padding token.

    `inputs` is a `PairwiseCollator` batch: B chosen rows, then the B rejected ones in the same order.
    """
    scores = sequence_scores(model, inputs["input_ids"], inputs["attention_mask"])
    chosen, rejected = scores.chunk(2)
    return chosen, rejected


@dataclass
class RewardObjective:
    """The Bradley–Terry loss of one batch of pairs, with `accuracy` (share of pairs whose chosen reward
    is strictly above the rejected one) and `margin` (mean reward gap) logged beside it, and each pair's
    (chosen, rejected) rewards as the scores `predict` returns."""

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveResult:
        chosen, rejected = pair_scores(model, batch)
        gap = (chosen - rejected).detach()
        stats: Stats = {"accuracy": (gap > 0).float(), "margin": gap}
        return ObjectiveResult(bradley_terry_loss(chosen, rejected), stats,
                               scores=torch.stack([chosen, rejected], dim=1).detach())


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
            prompt, chosen_ids = split_prompt(row["chosen_input_ids"], row["chosen_labels"])
            _, rejected_ids = split_prompt(row["rejected_input_ids"], row["rejected_labels"])
            prompt, chosen_text, rejected_text = (tokenizer.decode(ids) for ids in (prompt, chosen_ids, rejected_ids))
            line = {"prompt": prompt, "chosen_response": chosen_text, "rejected_response": rejected_text,
                    "chosen": round(chosen, 6), "rejected": round(rejected, 6), "correct": chosen > rejected}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path
