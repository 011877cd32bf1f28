"""Supervised fine-tuning (and, with `stage: pt`, continued pre-training).

Reads top to bottom: set up tokenizer, template, data and model; train (resuming from the
last checkpoint); save the adapter or model, logs and loss plot; evaluate; predict.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import Trainer, set_seed

from kubetune.config import RunConfig
from kubetune.data.collator import DataCollatorForSupervised
from kubetune.data.packing import packing_mode
from kubetune.data.setup import stage_data
from kubetune.evaluate.generate import predict
from kubetune.evaluate.metrics import perplexity
from kubetune.losses.causal_lm import causal_lm_loss_sum, causal_lm_parts
from kubetune.model import packed_attention
from kubetune.model.adapters import prepare_for_training
from kubetune.model.loader import load_base_model, weight_dtype
from kubetune.model.memory_optimizers import attach, custom_optimizer
from kubetune.model.pissa import pissa_callbacks
from kubetune.tracking import JsonlLogCallback
from kubetune.train.arguments import training_arguments
from kubetune.train.recipe import train_and_save, write_bad_rows
from kubetune.train.result import StageResult

logger = logging.getLogger(__name__)


class SupervisedTrainer(Trainer):
    """The HF Trainer with a training loss that never builds full-vocabulary logits.

    Same loss as the model's own (the sum of per-token cross-entropies over learnt positions,
    divided by the learnt tokens of the whole accumulated batch), computed by
    `fused_loss.causal_lm_loss_sum`: the output head runs only where a label is learnt, a
    chunk at a time. Evaluation, and models whose logits are more than `head(hidden)`, keep
    the usual path.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        parts = None
        if model.training and not return_outputs and "labels" in inputs:
            parts = causal_lm_parts(self.accelerator.unwrap_model(model))
        if parts is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        with self.accelerator.autocast():  # bf16/fp16 autocast wraps the model's forward, which this bypasses
            loss_sum, learnt = causal_lm_loss_sum(*parts, inputs)
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            return loss_sum / max(learnt, 1)  # a per-batch mean: the Trainer divides by accumulation steps
        loss = loss_sum / num_items_in_batch
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss


def padding_free(cfg: RunConfig, model) -> bool:  # noqa: ANN001
    """Whether batches of unpacked rows are packed into padding-free rows (`DataCollatorForSupervised`).

    Same examples per batch and the same loss, without computing padding. On unless `packing: false`
    or the dataset is packed already, and only for transformers' own model code: it turns restarting
    position ids into separate attention blocks, which remote code may not do.
    """
    if cfg.data.packing is False or packing_mode(cfg.data.packing, cfg.data.neat_packing, cfg.method.stage)[0]:
        return False
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(inner).__module__.startswith("transformers.models.")


def run(cfg: RunConfig, callbacks: list | None = None) -> StageResult:
    """Run the configured `do_train` / `do_eval` / `do_predict` steps of an sft or pt stage.

    Args:
        cfg: a validated config (`kubetune.config.load_config`); `cfg.train.output_dir` is required.
        callbacks: extra `TrainerCallback`s (trackers, tests that interrupt training).

    Returns:
        StageResult with the output directory, the merged metrics, and paths of what was written.
    """
    out = Path(cfg.train.output_dir or "outputs")
    out.mkdir(parents=True, exist_ok=True)
    do_train = cfg.train.do_train is not False
    do_eval = cfg.train.do_eval or cfg.train.eval_strategy != "no"

    # --- setup ---
    s = stage_data(cfg, cfg.method.stage, train=do_train, evaluate=do_eval or cfg.train.do_predict)
    model_path, tokenizer, template, data = s.model_path, s.tokenizer, s.template, s.data
    dtype = weight_dtype(cfg)  # a LoRA base is 16-bit under bf16/fp16 (see weight_dtype)
    set_seed(cfg.train.seed)  # adapter initialisation draws from the global RNG: same seed, same run
    model = load_base_model(cfg.model, dtype=dtype, path=model_path)
    model = prepare_for_training(model, cfg.model, cfg.method, is_trainable=do_train,
                                 gradient_checkpointing=do_train and cfg.train.gradient_checkpointing)

    # Padding-free batches run sdpa per packed sequence. Flash attention and that keep sequences apart
    # within one row, so the batch becomes a single row without any padding. Neat-packed rows keep
    # transformers' block mask: over a cutoff-long row it is cheap, and measured side by side on the
    # bench's best run it was 1.1-1.2x faster at 0.5 GB less peak memory than many small SDPA calls.
    free = padding_free(cfg, model)
    per_sequence = free and packed_attention.use(model)
    one_row = model.config._attn_implementation == "flash_attention_2" or per_sequence

    args = training_arguments(cfg, out)
    eval_set = data.eval.select_columns(["input_ids", "labels"]) if data.eval is not None else None
    trainer = SupervisedTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=eval_set if do_eval else None,
        data_collator=DataCollatorForSupervised(tokenizer=tokenizer, flatten_packed=one_row,
                                                padding_free=free),
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(out), *pissa_callbacks(cfg.method, out), *(callbacks or [])],
        optimizers=(custom_optimizer(model, args, cfg.method), None),  # GaLore/BAdam/LoRA+, or None: the Trainer's
    )
    attach(trainer, cfg.method)
    metrics: dict[str, float] = {}
    files: dict[str, str] = {}
    write_bad_rows(out, data, files)

    # --- train ---
    if do_train:
        train_metrics, train_files = train_and_save(trainer, cfg, data, out, tokenizer=tokenizer)
        metrics.update(train_metrics)
        files.update(train_files)

    # --- evaluate ---
    if do_eval and eval_set is not None:
        eval_metrics = trainer.evaluate(eval_set)
        eval_metrics["eval_perplexity"] = perplexity(eval_metrics["eval_loss"])
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # --- predict ---
    if cfg.train.do_predict and data.eval is not None:
        predict_metrics = predict(trainer.model, tokenizer, data.eval, cfg.generation,
                                  stop_token_ids=template.stop_token_ids(tokenizer),
                                  batch_size=cfg.train.per_device_eval_batch_size,
                                  output_file=out / "generated_predictions.jsonl")
        trainer.save_metrics("predict", predict_metrics)
        metrics.update(predict_metrics)
        files["predictions"] = str(out / "generated_predictions.jsonl")

    (out / "run_summary.json").write_text(json.dumps({"metrics": metrics, "files": files}, indent=2) + "\n")
    return StageResult(output_dir=out, metrics=metrics, files=files)
