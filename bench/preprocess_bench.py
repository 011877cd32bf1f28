"""The preprocessing cost curve: rows/s and peak RSS of `pipeline.tokenized` at growing dataset sizes.

    python -m bench.preprocess_bench [--rows 1000,50000] [--project 1000000] [--json out.json]

Each size runs in its own subprocess (`--one N`), so its peak RSS (`ru_maxrss`) is its own: reading
the bench's alpaca rows (`bench.data`), converting, tokenising with the SmolLM2 tokenizer (chatml,
cutoff 512) and writing the Arrow cache into a fresh cache folder. The peak is printed with the
process's RSS just before preprocessing (imports and tokenizer), so the table shows what the rows cost.
A linear fit through the measured sizes projects the peak at `--project` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_one(rows: int, folder: Path) -> dict[str, Any]:
    """Tokenise the `rows` bench rows in `folder` in this process; its peak RSS is the measurement."""
    from transformers import AutoTokenizer

    from bench.data import DATASET
    from kubetune.config import load_config
    from kubetune.data.pipeline import tokenized
    from kubetune.data.template_registry import get_template
    from kubetune.model.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())  # before KUBETUNE_CACHE moves
    with tempfile.TemporaryDirectory(prefix="kt-prep-bench-") as tmp:
        os.environ["KUBETUNE_CACHE"] = str(Path(tmp) / "cache")
        data = load_config(None, {"model_name_or_path": "x", "dataset": DATASET, "dataset_dir": str(folder),
                                  "template": "chatml", "cutoff_len": 512, "packing": False}).data
        template = get_template("chatml", tokenizer)
        base_mb = _rss_now_mb()
        start = time.perf_counter()
        result = tokenized(data, tokenizer, template, stage="sft", seed=0)
        seconds = time.perf_counter() - start
        built = len(result.train)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "train_rows": built, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "base_rss_mb": round(base_mb), "peak_rss_mb": round(peak_mb),
            "rows_rss_mb": round(peak_mb - base_mb)}


def run_sizes(sizes: list[int]) -> list[dict[str, Any]]:
    """Each size in a fresh subprocess of this module, so peaks do not carry over."""
    from bench.data import write_dataset

    results = []
    # a PYTHONPATH given first: `PYTHONPATH=<other checkout>/src` measures that checkout's pipeline
    path = [os.environ.get("PYTHONPATH"), str(REPO / "src"), str(REPO)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="kt-prep-data-") as tmp:
            folder = write_dataset(Path(tmp), rows=rows)  # here: generating the rows is not preprocessing
            proc = subprocess.run([sys.executable, "-m", "bench.preprocess_bench", "--one", str(rows),
                                   "--data", str(folder)], cwd=REPO, env=env, capture_output=True, text=True,
                                  check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"preprocessing {rows} rows failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def project(results: list[dict[str, Any]], rows: int) -> dict[str, float] | None:
    """Least-squares line through (rows, peak RSS) and (rows, seconds), evaluated at `rows`."""
    if len(results) < 2:
        return None

    def fit(key: str) -> float:
        xs, ys = [r["rows"] for r in results], [r[key] for r in results]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        return my + slope * (rows - mx)

    return {"rows": rows, "peak_rss_mb": round(fit("peak_rss_mb")), "seconds": round(fit("seconds"), 1)}


def table(results: list[dict[str, Any]], projection: dict[str, float] | None) -> str:
    lines = ["| rows | rows/s | seconds | RSS before (MB) | peak RSS (MB) | peak − before (MB) |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rows']:,} | {r['rows_per_s']:,} | {r['seconds']} | {r['base_rss_mb']:,} | "
              f"{r['peak_rss_mb']:,} | {r['rows_rss_mb']:,} |" for r in results]
    if projection:
        lines.append(f"| {projection['rows']:,} (projected) | | {projection['seconds']} | | "
                     f"{projection['peak_rss_mb']:,} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,50000", help="comma-separated dataset sizes")
    parser.add_argument("--project", type=int, default=1_000_000, help="project the peak to this many rows")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the subprocess: measure one size
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)  # ... of the rows in this folder
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.data)))
        return 0
    results = run_sizes([int(n) for n in args.rows.split(",")])
    projection = project(results, args.project)
    print(table(results, projection))
    if args.json:
        args.json.write_text(json.dumps({"sizes": results, "projection": projection}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
