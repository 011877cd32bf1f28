"""Measure peak RSS of short CPU sft runs against `kubetune.estimate` (the table in docs/estimate.md).

Not a test (CPU-heavy): run `python scripts/measure_estimate_rss.py [tiny|smollm2] [lora|full] [gc|nogc]`.
Each case runs in a fresh process: RSS is read after every import (the baseline), then the run's peak
(ru_maxrss) minus the baseline is the training memory, compared with the estimate without a CUDA context.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def case(model: str, method: str, gc: str) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_model

    from kubetune.config import load_config
    from kubetune.estimate import estimate_config
    from kubetune.model.embedded import embedded_model_dir
    from kubetune.stages import run_stage

    tmp = Path(tempfile.mkdtemp())
    path = build_tiny_model(tmp / "tiny", embedded_model_dir()) if model == "tiny" else embedded_model_dir()
    cfg = load_config(None, {
        "model_name_or_path": str(path), "stage": "sft", "finetuning_type": method, "dataset": "kubi_sft",
        "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 256, "packing": True,
        "per_device_train_batch_size": 4, "max_steps": 3, "output_dir": str(tmp / "out"), "report_to": "none",
        "disable_tqdm": True, "save_strategy": "no", "gradient_checkpointing": gc == "gc", "flash_attn": "sdpa"})
    est, _ = estimate_config(cfg, cuda_context=0)
    base = rss()
    run_stage(cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"case": f"{model} {method} {gc}", "measured": peak - base, "estimate": est.total,
            "parts": {k: getattr(est, k) for k in ("weights", "gradients", "optimizer", "activations", "logits")}}


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(json.dumps(case(*sys.argv[1:])))
    else:
        for args in (("tiny", "lora", "gc"), ("smollm2", "lora", "gc"), ("smollm2", "lora", "nogc"),
                     ("smollm2", "full", "gc")):
            out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            err = (r["estimate"] - r["measured"]) / r["measured"]
            print(f"| {r['case']} | {r['measured'] / 2**20:.0f} MiB | {r['estimate'] / 2**20:.0f} MiB | {err:+.0%} |",
                  flush=True)
