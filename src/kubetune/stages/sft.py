"""Supervised fine-tuning (and, with `stage: pt`, continued pre-training).

Reads top to bottom: set up tokenizer, template, data and model, and the batch layout; train
(resuming from the last checkpoint); save the adapter or model, logs and loss plot; evaluate; predict.
"""

from __future__ import annotations

import logging

from transformers import Trainer

from kubetune.config import RunConfig
from kubetune.config.rules_lf_keys import metric_name
from kubetune.data.collator import DataCollatorForSupervised
from kubetune.data.eval_sets import eval_splits
from kubetune.data.setup import stage_data
from kubetune.evaluate.accuracy import TokenAccuracy, argmax_logits
from kubetune.evaluate.generate import predict
from kubetune.evaluate.metrics import perplexity
from kubetune.losses.causal_lm import causal_lm_loss_sum, causal_lm_parts
from kubetune.losses.sft_objectives import SftObjective, sft_objective, sft_objective_loss_sum
from kubetune.model.loader import weight_dtype
from kubetune.model.memory_optimizers import attach, custom_optimizer
from kubetune.model.pissa import pissa_callbacks
from kubetune.model.policy import load_policy
from kubetune.model.reference import Reference, load_reference
from kubetune.model.wrapper_forward import forward_through_wrapper
from kubetune.tracking import JsonlLogCallback
from kubetune.train import recipe
from kubetune.train.arguments import training_arguments
from kubetune.train.layout import apply as apply_layout
from kubetune.train.layout import plan_sft
from kubetune.train.result import StageResult, finish

logger = logging.getLogger(__name__)


class SupervisedTrainer(Trainer):
    """The HF Trainer with a training loss that never builds full-vocabulary logits.

    Same loss as the model's own (the sum of per-token cross-entropies over learnt positions,
    divided by the learnt tokens of the whole accumulated batch), computed by
    `fused_loss.causal_lm_loss_sum`: the output head runs only where a label is learnt, a
    chunk at a time. Evaluation, and models whose logits are more than `head(hidden)`, keep
    the usual path.

    With `objective` (DFT, EAFT, ASFT: `losses.sft_objectives`), training sums that objective's token losses
    instead, divided the same way; evaluation still reports cross-entropy (so eval_loss and eval_perplexity
    stay comparable across objectives). `reference` is ASFT's π_ref.
    """

    def __init__(self, *args, objective: SftObjective | None = None, reference: Reference | None = None,
                 **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.reference = reference

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        training = model.training and not return_outputs and "labels" in inputs
        if training and self.objective is not None:
            loss_sum, learnt = self._objective_loss_sum(model, inputs)
            return self._normalised(loss_sum, learnt, num_items_in_batch)
        parts = causal_lm_parts(self.accelerator.unwrap_model(model)) if training else None
        if parts is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        with self.accelerator.autocast():  # bf16/fp16 autocast wraps the model's forward, which this bypasses
            loss_sum, learnt = forward_through_wrapper(model, lambda: causal_lm_loss_sum(*parts, inputs))
        return self._normalised(loss_sum, learnt, num_items_in_batch)

    def _objective_loss_sum(self, model, inputs):  # noqa: ANN001, ANN202
        inner = self.accelerator.unwrap_model(model)
        with self.accelerator.autocast():
            ref_rows = None
            if self.objective.needs_reference:
                ref_rows = (self.reference or Reference(None)).label_rows(model, inputs)
            return forward_through_wrapper(model, lambda: sft_objective_loss_sum(self.objective, inner, inputs,
                                                                                 ref_rows))

    def _normalised(self, loss_sum, learnt, num_items_in_batch):  # noqa: ANN001, ANN202
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            return loss_sum / max(learnt, 1)  # a per-batch mean: the Trainer divides by accumulation steps
        loss = loss_sum / num_items_in_batch
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss


def accuracy_metrics(cfg: RunConfig) -> dict:
    """The Trainer's metric hooks for `compute_accuracy` (eval_accuracy from argmax ids), or none."""
    if not cfg.train.compute_accuracy:
        return {}
    return {"compute_metrics": TokenAccuracy(), "preprocess_logits_for_metrics": argmax_logits}


def _perplexities(metrics: dict[str, float]) -> dict[str, float]:
    """eval_perplexity from eval_loss (and eval_<name>_perplexity from each eval_<name>_loss)."""
    return {f"{key.removesuffix('_loss')}_perplexity": perplexity(value) for key, value in metrics.items()
            if key.startswith("eval") and key.endswith("_loss")}


def run(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run the configured `do_train` / `do_eval` / `do_predict` steps of an sft or pt stage.

    Args:
        cfg: a validated config (`kubetune.config.load_config`); `cfg.train.output_dir` is required.
        callbacks: extra `TrainerCallback`s (trackers, tests that interrupt training).

    Returns:
        StageResult with the output directory, the merged metrics, and paths of what was written.
    """
    steps = recipe.start(cfg)
    out = steps.out

    # --- setup ---
    s = stage_data(cfg, cfg.method.stage, train=steps.train, evaluate=steps.needs_eval_split)
    tokenizer, template, data = s.tokenizer, s.template, s.data
    args = training_arguments(cfg, out)  # before the model: under ZeRO-3 it loads partitioned (see its docstring)
    model, _ = load_policy(cfg, s.model_path, trainable=steps.train, tokenizer=tokenizer)
    layout = plan_sft(cfg, model)
    apply_layout(layout, {"policy": model})
    objective = sft_objective(cfg.method)
    reference = None
    if objective is not None and objective.needs_reference and steps.train:
        reference = load_reference(cfg, s.model_path, weight_dtype(cfg), args.device)
        if reference.model is not None:  # the same batches reach π_ref: the same attention kernel
            apply_layout(layout, {"policy": reference.model})

    eval_set = data.eval.select_columns(["input_ids", "labels"]) if data.eval is not None else None
    if eval_set is not None and steps.eval and cfg.data.eval_on_each_dataset:  # one split per eval_dataset name
        eval_set = {metric_name(name): split.select_columns(["input_ids", "labels"])
                    for name, split in eval_splits(cfg, tokenizer, template, cfg.method.stage).items()}
    trainer = SupervisedTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=eval_set if steps.eval else None,
        data_collator=DataCollatorForSupervised(tokenizer=tokenizer, flatten_packed=layout.one_row,
                                                padding_free=layout.padding_free),
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(out), *pissa_callbacks(cfg.method, out), *(callbacks or [])],
        optimizers=(custom_optimizer(model, args, cfg.method), None),  # GaLore/BAdam/LoRA+, or None: the Trainer's
        objective=objective,
        reference=reference,
        **accuracy_metrics(cfg),
    )
    attach(trainer, cfg.method)
    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    recipe.write_bad_rows(out, data, files)

    # --- train ---
    if steps.train:
        train_metrics, train_files = recipe.train_and_save(trainer, cfg, data, out, tokenizer=tokenizer)
        metrics.update(train_metrics)
        files.update(train_files)

    # --- evaluate ---
    if steps.eval and eval_set is not None:
        metrics.update(recipe.evaluate(trainer, eval_set, derived=_perplexities))

    # --- predict ---
    if steps.generates and data.eval is not None:
        predict_metrics = predict(trainer.model, tokenizer, data.eval, cfg.generation,
                                  stop_token_ids=template.stop_token_ids(tokenizer),
                                  batch_size=cfg.train.per_device_eval_batch_size,
                                  output_file=out / "generated_predictions.jsonl")
        trainer.save_metrics("predict", predict_metrics)
        metrics.update(predict_metrics)
        files["predictions"] = str(out / "generated_predictions.jsonl")

    return finish(out, metrics, files, layout.as_dict(), steps.world)
