"""One benchmark run in this process; prints one JSON line (the last line of stdout).

    python -m bench.run_one --tool kubetune --variant default --model DIR --data DIR --work DIR [--steps 30]

Each run is its own process so that its peak RSS (`ru_maxrss`) is its own. Every tool trains
the same model on the same rows with the same settings (LoRA r8 α16 on all linear layers,
cutoff 512, batch 4, lr 2e-4 cosine, seed 42); a variant changes only what its name says.

Effective tokens are counted the same way for every tool, by a hook on the model's forward:
the tokens of each batch that are not padding (an attention mask's ones; in a packed row
without a mask, everything except a trailing all-pad segment).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from bench.data import DATASET  # noqa: E402

# The common settings, in LLaMA-Factory's keys.
COMMON: dict[str, Any] = {
    "stage": "sft", "finetuning_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,
    "lora_target": "all", "template": None, "cutoff_len": 512, "per_device_train_batch_size": 4,
    "learning_rate": 2e-4, "lr_scheduler_type": "cosine", "seed": 42, "logging_steps": 1,
    "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "overwrite_output_dir": True,
}

# What each variant changes; kubetune's `default` changes nothing (its own defaults decide).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "kubetune": {
        "default": {},
        # the settings of TRL's plain run: pad to the longest row in data order, float32, no checkpointing
        "equal": {"packing": False, "bf16": False, "gradient_checkpointing": False},
        # length-grouped batches: less padding, same rows per step
        "grouped": {"group_by_length": True},
        # speed first: neat packing (no padding at all) without activation checkpointing; bf16 as by default
        "best": {"neat_packing": True, "gradient_checkpointing": False},
    },
    "trl": {
        "plain": {},
        "packing": {"packing": True, "padding_free": True},
    },
    "llamafactory": {
        "default": {},
        "no_gc": {"disable_gradient_checkpointing": True},
        "no_gc_neat": {"disable_gradient_checkpointing": True, "packing": True, "neat_packing": True},
    },
}

# Dense bf16 peak FLOP/s of GPUs MFU is reported against (SXM parts).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def count_real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, pad_id: int | None) -> int:
    """Tokens in a batch that are not padding.

    With an attention mask: its ones. Packed rows carry position ids instead, and their padding
    is one trailing segment (positions restarting at 0) made only of pad ids; a flattened
    padding-free batch has no padding at all.
    """
    if attention_mask is not None:
        return int(attention_mask.sum())
    if position_ids is None or pad_id is None:
        return int(input_ids.numel())
    total = 0
    for ids, positions in zip(input_ids.reshape(-1, input_ids.shape[-1]),
                              position_ids.reshape(-1, position_ids.shape[-1]), strict=True):
        starts = (positions == 0).nonzero().flatten()
        last = int(starts[-1]) if len(starts) else 0
        tail = ids[last:]
        padded = last > 0 and bool((tail == pad_id).all())
        total += last if padded else len(ids)
    return total


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (e.g. `LlamaModel`) inside a causal LM, through a PEFT wrapper.

    Hooked there because every tool calls it with the batch's mask or positions, while a
    loss that skips the full logits (kubetune) bypasses the causal LM's own forward.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, getattr(inner, "base_model_prefix", "model"), inner)


class Meter(TrainerCallback):
    """Counts real tokens per forward and records per-step losses and the train time."""

    def __init__(self, pad_id: int | None) -> None:
        self.pad_id = pad_id
        self.tokens = 0
        self.losses: list[float] = []
        self.hooked = False
        self.start = self.end = 0.0
        self.cpu_start = self.cpu_end = 0.0

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            self.tokens += count_real_tokens(input_ids, kwargs.get("attention_mask"), kwargs.get("position_ids"),
                                             self.pad_id)

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if model is not None and not self.hooked:
            decoder_of(model).register_forward_pre_hook(self._hook, with_kwargs=True)
            self.hooked = True
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.end = time.perf_counter()
        self.cpu_end = time.process_time()


def peak_memory_gb() -> dict[str, float]:
    """Peak RSS of this process (CPU) and, on a GPU, the peak allocated device memory."""
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
    if torch.cuda.is_available():
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def model_flops_per_token(config: Any, n_params: int, seq_len: float, lora: bool) -> float:
    """Training FLOPs per token: 6N for full fine-tuning, ~4N with LoRA (no weight gradients of
    the frozen base), plus causal attention (12·layers·hidden·seq/2 scaled by the same 3:2)."""
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len / 2
    return (4 if lora else 6) * n_params + attention * (4 / 6 if lora else 1)


def mfu(tokens_per_s: float, flops_per_token: float) -> float | None:
    """Model FLOPs utilisation on a known GPU; None on CPU or an unknown device."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return tokens_per_s * flops_per_token / peak if peak else None


def summarise(meter: Meter, runtime: float, steps: int, extra: dict[str, Any]) -> dict[str, Any]:
    tail = meter.losses[-5:]
    return {
        "tokens": meter.tokens,
        "runtime_s": runtime,
        "tokens_per_s": meter.tokens / runtime if runtime else 0.0,
        "step_time_s": runtime / max(steps, 1),
        # CPU seconds of this process per step: on a shared machine, less sensitive to other jobs than wall time
        "cpu_s_per_step": (meter.cpu_end - meter.cpu_start) / max(steps, 1),
        "steps": steps,
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "losses": meter.losses,
        **peak_memory_gb(),
        **extra,
    }


def run_kubetune(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    from kubetune.config import load_config
    from kubetune.stages import run_stage

    keys = {**COMMON, **settings, "model_name_or_path": args.model, "dataset": DATASET,
            "dataset_dir": args.data, "max_steps": args.steps, "output_dir": str(Path(args.work) / "out")}
    keys = {k: v for k, v in keys.items() if v is not None}
    cfg = load_config(None, keys)
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(args.model).pad_token_id
    meter = Meter(pad_id)
    result = run_stage(cfg, callbacks=[meter])
    m = result.metrics
    summary = summarise(meter, m["train_runtime"], args.steps, {
        "preprocess_s": m.get("train_preprocess_seconds"),
        "cache_hit": bool(m.get("train_tokenized_cache_hit")),
    })
    return summary


def run_trl(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = json.loads(Path(args.data, f"{DATASET}.json").read_text())
    # alpaca → prompt/completion messages: TRL then learns the completion only, as kubetune does
    data = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": "\n".join(p for p in (r["instruction"], r["input"]) if p)}],
         "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    on_gpu = torch.cuda.is_available()
    bf16 = bool(settings.pop("bf16", False))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    if on_gpu:
        model.to("cuda")
    config = SFTConfig(
        output_dir=str(Path(args.work) / "out"), max_length=COMMON["cutoff_len"],
        per_device_train_batch_size=COMMON["per_device_train_batch_size"], learning_rate=COMMON["learning_rate"],
        lr_scheduler_type="cosine", max_steps=args.steps, logging_steps=1, save_strategy="no", report_to=[],
        seed=42, disable_tqdm=True, gradient_checkpointing=False, bf16=bf16, use_cpu=not on_gpu,
        dataloader_pin_memory=on_gpu, **settings,
    )
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    meter = Meter(tokenizer.pad_token_id)
    start = time.perf_counter()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[meter])
    preprocess = time.perf_counter() - start  # tokenisation (+ the LoRA wrap, well under a second)
    result = trainer.train()
    return summarise(meter, result.metrics["train_runtime"], args.steps, {"preprocess_s": preprocess})


def run_llamafactory(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """Train with LLaMA-Factory in its own venv (LLAMAFACTORY_PYTHON), through bench/lf_train.py."""
    import subprocess

    import yaml

    python = os.environ.get("LLAMAFACTORY_PYTHON", "")
    if not python or not Path(python).is_file():
        raise SystemExit("LLaMA-Factory is not installed: set LLAMAFACTORY_PYTHON to its venv's python")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # LLaMA-Factory's template for SmolLM2 is the model's own chat format, as kubetune's template: null reads it
    keys = {**COMMON, "template": "smollm2", **settings, "model_name_or_path": args.model, "dataset": DATASET,
            "dataset_dir": args.data, "do_train": True, "max_steps": args.steps, "output_dir": str(work / "out"),
            "plot_loss": False, "overwrite_cache": True,  # a cold preprocessing run, as kubetune's is timed
            "trust_remote_code": False}
    cfg, result = work / "lf.yaml", work / "lf_result.json"
    cfg.write_text(yaml.safe_dump(keys))
    subprocess.run([python, str(Path(__file__).with_name("lf_train.py")), str(cfg), str(result)], check=True,
                   stdout=sys.stderr, env={**os.environ, "PYTHONPATH": "", "DISABLE_VERSION_CHECK": "1"})
    return json.loads(result.read_text())


def run_prep(args: argparse.Namespace) -> dict[str, Any]:
    """kubetune preprocessing alone: a cold build (rows/s), then a repeat that must hit the cache."""
    from kubetune.config import load_config
    from kubetune.data.pipeline import tokenized
    from kubetune.data.setup import tokenizer_and_template

    keys = {**COMMON, "model_name_or_path": args.model, "dataset": DATASET, "dataset_dir": args.data,
            "output_dir": str(Path(args.work) / "out")}
    cfg = load_config(None, {k: v for k, v in keys.items() if v is not None})
    tokenizer, template = tokenizer_and_template(cfg, args.model)
    timings = {}
    for name, overwrite in (("cold", True), ("repeat", False)):
        cfg.data.overwrite_cache = overwrite
        data = tokenized(cfg.data, tokenizer, template, stage="sft", seed=42)
        timings[name] = (data.seconds, data.cache_hit)
    rows = len(json.loads(Path(args.data, f"{DATASET}.json").read_text()))
    return {"rows": rows, "cold_s": timings["cold"][0], "rows_per_s": rows / timings["cold"][0],
            "repeat_s": timings["repeat"][0], "repeat_cache_hit": timings["repeat"][1], **peak_memory_gb()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", choices=[*VARIANTS, "prep"], required=True)
    parser.add_argument("--variant", default="default")
    parser.add_argument("--model", required=True, help="an HF model directory")
    parser.add_argument("--data", required=True, help="folder from bench.data.write_dataset")
    parser.add_argument("--work", required=True, help="scratch folder for this run's outputs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra settings on top of the variant (YAML values)")
    args = parser.parse_args(argv)
    if args.tool == "prep":
        result = run_prep(args)
    else:
        import yaml

        settings = dict(VARIANTS[args.tool][args.variant])
        for item in args.set:
            key, _, value = item.partition("=")
            settings[key] = yaml.safe_load(value)
        runner = {"kubetune": run_kubetune, "trl": run_trl, "llamafactory": run_llamafactory}[args.tool]
        result = {"tool": args.tool, "variant": args.variant, "settings": settings, **runner(args, settings)}
        if torch.cuda.is_available():
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(args.model)
            n_params = _param_count(args.model)
            result["mfu"] = mfu(result["tokens_per_s"], model_flops_per_token(
                config, n_params, COMMON["cutoff_len"], lora=True))
    print(json.dumps(result), flush=True)


def _param_count(model_dir: str) -> int:
    from safetensors import safe_open

    total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                total += _prod(f.get_slice(key).get_shape())
    return total


def _prod(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


if __name__ == "__main__":
    main()
