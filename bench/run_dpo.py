"""One DPO benchmark run in this process; prints one JSON line (the last line of stdout).

    python -m bench.run_dpo --tool kubetune|trl --variant NAME --model DIR --data DIR --work DIR [--steps 30]

The DPO half of `make bench`: kubetune's `dpo` stage against TRL's `DPOTrainer` on the same model,
the same preference pairs (`bench.dpo_data`, in the same order) and the same settings: LoRA r8 α16
dropout 0 on all linear layers, sequences cut at 512 tokens, batch 4 pairs, lr 5e-5 cosine, sigmoid
loss with β 0.1, seed 42, a log every step, no saving, no eval. The reference is the policy with its
LoRA adapter disabled in both tools (no second copy of the model). A variant changes only what its
name says.

Throughput is pairs/s: optimiser steps × batch × gradient accumulation (× processes), from the
trainer's state, over the wall time between `on_train_begin` and `on_train_end` (preprocessing and
model loading excluded for both tools).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.dpo_data import DATASET
from bench.run_one import COMMON, Meter, peak_memory_gb

# The common settings, in LLaMA-Factory's keys (run_one's, with DPO's learning rate and loss).
DPO_COMMON: dict[str, Any] = {
    **COMMON, "stage": "dpo", "learning_rate": 5e-5, "pref_loss": "sigmoid", "pref_beta": 0.1,
    "gradient_accumulation_steps": 1,
}

# What each variant changes; kubetune's `default` changes nothing (its own defaults decide).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "kubetune": {
        "default": {},
        # the settings of TRL's plain run: padded batches, no checkpointing, float32
        "equal": {"packing": False, "gradient_checkpointing": False, "bf16": False},
        # speed first: no checkpointing (bf16 where the device has it, as by default)
        "best": {"gradient_checkpointing": False},
    },
    "trl": {
        "plain": {},
        # DPOConfig's own defaults: bf16 mixed precision and gradient checkpointing on
        "default": {"bf16": True, "gradient_checkpointing": True},
    },
}

"""How far (absolute) a first DPO loss may be from ln 2 in the guard: policy = reference makes it exact."""


class PairMeter(Meter):
    """run_one's Meter for pairs: train wall and CPU time, per-step losses, the first log, the steps and pairs done.

    Tokens are not counted (the forward hook is not installed): each DPO step runs the policy and the
    reference on the same batch, and the unit compared here is the pair.
    """

    def __init__(self) -> None:
        super().__init__(pad_id=None)
        self.first_log: dict[str, float] = {}
        self.steps = 0
        self.pairs = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        super().on_train_begin(args, state, control)  # no model: times only, no token hook

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        super().on_log(args, state, control, logs=logs)
        if logs and "loss" in logs and not self.first_log:
            self.first_log = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        super().on_train_end(args, state, control)
        self.steps = state.global_step
        self.pairs = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * max(
            args.world_size, 1)


def summarise(meter: PairMeter, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's JSON fields from its meter (see the module docstring for the units)."""
    runtime = meter.end - meter.start
    steps = max(meter.steps, 1)
    tail = meter.losses[-5:]
    first = meter.first_log
    return {
        "pairs": meter.pairs,
        "runtime_s": runtime,
        "pairs_per_s": meter.pairs / runtime if runtime else 0.0,
        "step_time_s": runtime / steps,
        # CPU seconds of this process per step: on a shared machine, less sensitive to other jobs than wall time
        "cpu_s_per_step": (meter.cpu_end - meter.cpu_start) / steps,
        "steps": meter.steps,
        "first_loss": meter.losses[0] if meter.losses else float("nan"),
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "losses": meter.losses,
        # the first step's summed response log-probs: equal in both tools when they see the same tokens
        "first_logps_chosen": first.get("logps/chosen"),
        "first_logps_rejected": first.get("logps/rejected"),
        **peak_memory_gb(),
        **(extra or {}),
    }


def run_kubetune(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    from kubetune.config import load_config
    from kubetune.stages import run_stage

    keys = {**DPO_COMMON, **settings, "model_name_or_path": args.model, "dataset": DATASET,
            "dataset_dir": args.data, "max_steps": args.steps, "output_dir": str(Path(args.work) / "out")}
    cfg = load_config(None, {k: v for k, v in keys.items() if v is not None})
    meter = PairMeter()
    result = run_stage(cfg, callbacks=[meter])
    m = result.metrics
    return summarise(meter, {"preprocess_s": m.get("train_preprocess_seconds"),
                             "cache_hit": bool(m.get("train_tokenized_cache_hit"))})


def trl_rows(rows: list[dict[str, str]]) -> list[dict[str, list[dict[str, str]]]]:
    """Alpaca ranking rows as TRL's conversational preference rows (prompt / chosen / rejected messages).

    The user turn is the instruction and the input joined by a newline, as kubetune's alpaca converter
    builds it; no system message, so the chat template adds its default in both tools.
    """
    return [{"prompt": [{"role": "user", "content": "\n".join(p for p in (r["instruction"], r["input"]) if p)}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def run_trl(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = json.loads(Path(args.data, f"{DATASET}.json").read_text())
    data = datasets.Dataset.from_list(trl_rows(rows))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    on_gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    if on_gpu:
        model.to("cuda")
    options: dict[str, Any] = {
        "output_dir": str(Path(args.work) / "out"), "max_length": DPO_COMMON["cutoff_len"],
        "truncation_mode": "keep_start", "per_device_train_batch_size": DPO_COMMON["per_device_train_batch_size"],
        "gradient_accumulation_steps": DPO_COMMON["gradient_accumulation_steps"],
        "learning_rate": DPO_COMMON["learning_rate"], "lr_scheduler_type": DPO_COMMON["lr_scheduler_type"],
        "max_steps": args.steps, "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no", "report_to": [],
        "seed": DPO_COMMON["seed"], "disable_tqdm": True, "gradient_checkpointing": False, "bf16": False,
        "use_cpu": not on_gpu, "dataloader_pin_memory": on_gpu,
        "loss_type": [DPO_COMMON["pref_loss"]], "beta": DPO_COMMON["pref_beta"],
        # the reference log-probs are computed each step (the adapter disabled), as kubetune does
        "precompute_ref_log_probs": False,
        **settings,
    }
    peft_config = LoraConfig(r=DPO_COMMON["lora_rank"], lora_alpha=DPO_COMMON["lora_alpha"],
                             lora_dropout=DPO_COMMON["lora_dropout"], target_modules="all-linear",
                             task_type="CAUSAL_LM")
    meter = PairMeter()
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=DPOConfig(**options), train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[meter])
    preprocess = time.perf_counter() - start  # tokenisation (+ the LoRA wrap, well under a second)
    trainer.train()
    return summarise(meter, {"preprocess_s": preprocess})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", choices=list(VARIANTS), required=True)
    parser.add_argument("--variant", default=None, help="default: kubetune's `default`, trl's `plain`")
    parser.add_argument("--model", required=True, help="an HF model directory")
    parser.add_argument("--data", required=True, help="folder from bench.dpo_data.write_dataset")
    parser.add_argument("--work", required=True, help="scratch folder for this run's outputs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra settings on top of the variant (YAML values; the tool's own key names)")
    args = parser.parse_args(argv)
    import yaml

    variant = args.variant or next(iter(VARIANTS[args.tool]))
    if variant not in VARIANTS[args.tool]:
        parser.error(f"unknown {args.tool} variant {variant!r}: choose from {', '.join(VARIANTS[args.tool])}")
    settings = dict(VARIANTS[args.tool][variant])
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    runner = {"kubetune": run_kubetune, "trl": run_trl}[args.tool]
    result = {"tool": args.tool, "variant": variant, "settings": settings, **runner(args, dict(settings))}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
