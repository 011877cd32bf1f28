"""Validate LLaMA-Factory's own example configs with kubetune, as a LLaMA-Factory user would bring them.

LLaMA-Factory's source distribution (fetched by `make lf-examples` into tools/lf-src) carries its `examples/`
and `data/` folders. Each text-model example under train_lora, train_qlora, train_full, merge_lora, extras and
inference is loaded and preflighted from the distribution's root (so `dataset_dir: data` and
`deepspeed: examples/deepspeed/...` resolve as they do for LLaMA-Factory), with only its model path changed to a
local model (and an adapter path, for merge and inference examples, to a LoRA adapter of that model). Examples out of
scope (an Ascend NPU, a multimodal model, a pre-quantised AWQ/GPTQ/AQLM checkpoint, a dataset name LLaMA-Factory's
own data/ does not register) are listed with why and not counted. With `--train`, the sft / dpo / kto / reward /
pretrain LoRA examples also train a few steps on LLaMA-Factory's own demo data (`kubetune train`, from the
distribution's root).

    python scripts/lf_examples.py [--lf-root tools/lf-src/llamafactory-0.9.5] [--model DIR] [--json OUT] [--train]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

FOLDERS = ("train_lora", "train_qlora", "train_full", "merge_lora", "extras", "inference")
# A pre-quantised checkpoint cannot be swapped for a local 16-bit model without changing what the example is.
PREQUANTISED = ("awq", "gptq", "aqlm")
MULTIMODAL_HINTS = ("vl", "llava", "pixtral", "paligemma", "qwen2_audio", "omni", "intern_vl", "minicpm_v")
# The LoRA examples that train, each on its own demo dataset; a few steps on short rows, to keep it minutes on a CPU.
TRAINED = ("train_lora/qwen3_lora_sft.yaml", "train_lora/qwen3_lora_dpo.yaml", "train_lora/qwen3_lora_kto.yaml",
           "train_lora/qwen3_lora_reward.yaml", "train_lora/qwen3_lora_pretrain.yaml")
SHORT_RUN = ["max_steps=3", "max_samples=24", "cutoff_len=128", "per_device_train_batch_size=2",
             "gradient_accumulation_steps=1", "save_steps=1000", "logging_steps=1", "report_to=none", "plot_loss=false",
             # the examples' bf16: true is for GPUs; unset, bf16 is decided by the device (emulated bf16 crawls on CPUs)
             "bf16=null"]


def out_of_scope(path: Path, config: dict, registered: set[str]) -> str:
    """Why an example is not a text-model config kubetune should run ("" when it is one).

    Args:
        path: the example.
        config: its keys.
        registered: the dataset names of LLaMA-Factory's own data/dataset_info.json.
    """
    name = path.name.lower()
    if str(config.get("dataset_dir", "data")) == "data":
        missing = [d.strip() for d in str(config.get("dataset") or "").split(",") if d.strip()
                   and d.strip() not in registered]
        if missing:  # a placeholder for the user's own data: LLaMA-Factory cannot run the example either
            return f"needs data LLaMA-Factory does not ship ({', '.join(missing)})"
    model = str(config.get("model_name_or_path", "")).lower()
    template = str(config.get("template", "")).lower()
    if "npu" in name:
        return "Ascend NPU"
    if any(q in name or q in model for q in PREQUANTISED):
        return "pre-quantised checkpoint"
    if any(h in template or h in model.rsplit("/", 1)[-1] for h in MULTIMODAL_HINTS) or any(
            key in config for key in ("image_max_pixels", "video_max_pixels", "freeze_vision_tower")):
        return "multimodal model"
    return ""


def model_overrides(config: dict, model: str, adapter: str) -> list[str]:
    """The example's model path (and adapter path, if it names one) pointed at local copies."""
    return [f"model_name_or_path={model}"] + ([f"adapter_name_or_path={adapter}"]
                                              if config.get("adapter_name_or_path") else [])


def lora_adapter(model: str, folder: Path) -> str:
    """A LoRA adapter of `model` (untrained, as PEFT initialises it), saved in `folder`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model)
    get_peft_model(base, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM")).save_pretrained(folder)
    return str(folder)


def check(path: Path, root: Path, overrides: list[str]) -> str:
    """"" when kubetune validates the example with `overrides` (its model paths), else the error it prints."""
    from kubetune.config import ConfigError, load_config
    from kubetune.validate.preflight import preflight, purpose

    previous = Path.cwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            cfg = load_config(str(path), overrides)
            preflight(cfg, purpose(cfg))
        return ""
    except ConfigError as err:
        return str(err)
    finally:
        os.chdir(previous)


def train(example: str, root: Path, model: str, output: Path) -> str:
    """"" when `kubetune train` runs the example a few steps (model path, run length and output changed), else the
    tail of its output."""
    command = [sys.executable, "-m", "kubetune.cli", "train", str(root / "examples" / example),
               f"model_name_or_path={model}", f"output_dir={output}", *SHORT_RUN]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    return "" if done.returncode == 0 else (done.stdout + done.stderr)[-3000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lf-root", default="tools/lf-src/llamafactory-0.9.5", type=Path)
    parser.add_argument("--model", default="", help="a local model directory (default: the embedded model)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--train", action="store_true", help="also train the LoRA examples a few steps")
    args = parser.parse_args(argv)
    root = args.lf_root.resolve()
    if not (root / "examples").is_dir():
        print(f"no examples/ under {root}: run `make lf-examples` to fetch LLaMA-Factory's source", file=sys.stderr)
        return 2
    if not args.model:
        from kubetune.model.embedded import embedded_model_dir

        args.model = str(embedded_model_dir())
    registered = set(json.loads((root / "data" / "dataset_info.json").read_text()))
    work = Path(tempfile.mkdtemp(prefix="lf-examples-"))
    adapter = lora_adapter(args.model, work / "adapter")
    results = []
    for folder in FOLDERS:
        for path in sorted((root / "examples" / folder).rglob("*.yaml")):
            config = yaml.safe_load(path.read_text()) or {}
            if not isinstance(config, dict) or "model_name_or_path" not in config:
                continue  # e.g. extras/multi_tokens/tokens_cfg.yaml: a file an example points to
            skip = out_of_scope(path, config, registered)
            error = "" if skip else check(path, root, model_overrides(config, args.model, adapter))
            results.append({"example": str(path.relative_to(root / "examples")), "skipped": skip, "error": error})
    if args.train:
        for example in TRAINED:
            error = train(example, root, args.model, work / Path(example).stem)
            results.append({"example": f"{example} (trained)", "skipped": "", "error": error})
    counted = [r for r in results if not r["skipped"]]
    passed = [r for r in counted if not r["error"]]
    for r in results:
        status = f"skip ({r['skipped']})" if r["skipped"] else "ok" if not r["error"] else "FAIL"
        print(f"{status:34} {r['example']}")
        if r["error"]:
            print("    " + r["error"].strip().replace("\n", "\n    "))
    validated = [r for r in counted if not r["example"].endswith("(trained)")]
    trained = [r for r in counted if r["example"].endswith("(trained)")]
    print(f"\n{sum(not r['error'] for r in validated)} of {len(validated)} text-model examples validate "
          f"({len(results) - len(counted)} out of scope)")
    if trained:
        print(f"{sum(not r['error'] for r in trained)} of {len(trained)} LoRA examples train")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if len(passed) == len(counted) else 1


if __name__ == "__main__":
    sys.exit(main())
