"""`make demo`: the main job on the embedded model, end to end, on this machine.

Evaluates the base model on held-out rows, trains a LoRA adapter, evaluates again, merges the
adapter into the base, and prints where everything went with the before/after metrics.
Each step is the `kubetune` command a user would type.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

CONFIG = "examples/sft_lora.yaml"
ADAPTER = "saves/smollm2-135m/lora/sft"
BEFORE, AFTER = "saves/demo/eval-before", "saves/demo/eval-after"
EXPORT = "models/smollm2-135m-kubi"
SHOWN = ("predict_exact_match", "predict_rouge-l", "predict_bleu-4", "eval_loss", "eval_perplexity")


def kubetune(*args: str) -> None:
    command = [sys.executable, "-m", "kubetune.cli", *args]
    print(f"\n$ kubetune {' '.join(args)}", flush=True)
    subprocess.run(command, check=True)


def metrics(output_dir: str) -> dict[str, float]:
    return json.loads(Path(output_dir, "run_summary.json").read_text())["metrics"]


def main() -> None:
    start = time.perf_counter()
    kubetune("eval", CONFIG, f"output_dir={BEFORE}", "overwrite_output_dir=true")
    kubetune("train", CONFIG)
    kubetune("eval", CONFIG, f"adapter_name_or_path={ADAPTER}", f"output_dir={AFTER}", "overwrite_output_dir=true")
    kubetune("export", "examples/merge_lora.yaml", f"export_dir={EXPORT}")
    before, after = metrics(BEFORE), metrics(AFTER)
    print("\n=== kubetune demo: SmolLM2-135M-Instruct + LoRA on held-out Kubi rows (data/kubi_sft_eval.json) ===")
    print(f"{'metric':24} {'before':>10} {'after':>10}")
    for key in SHOWN:
        if key in before and key in after:
            print(f"{key:24} {before[key]:10.3f} {after[key]:10.3f}")
    print(f"\nadapter:          {ADAPTER}")
    print(f"loss plot:        {ADAPTER}/training_loss.png")
    print(f"training log:     {ADAPTER}/trainer_log.jsonl")
    print(f"metrics:          {AFTER}/run_summary.json (before: {BEFORE}/run_summary.json)")
    print(f"predictions:      {AFTER}/generated_predictions.jsonl")
    print(f"merged model:     {EXPORT}")
    print(f"total time:       {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
