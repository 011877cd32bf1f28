"""The DPO half of `make bench`: kubetune's dpo stage against TRL's DPOTrainer, pairs/s side by side.

Each run is a `bench.run_dpo` subprocess on the same pairs (`bench.dpo_data`); runs alternate
between tools. The targets mirror the SFT ones, with TRL's DPOTrainer as the tool to beat:
kubetune's default ≥ 2× TRL's default pairs/s at no more memory, and kubetune's best ≥ 1.3× the
fastest TRL row at ≤ 0.8× its memory. The loss guard compares kubetune:equal with trl:plain.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.targets import dpo_loss_guard, speed_memory_target

RUNS = ["kubetune:default", "trl:default", "kubetune:equal", "trl:plain", "kubetune:best"]
QUICK_RUNS = ["kubetune:default", "trl:plain", "kubetune:equal"]


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per tool:variant: medians over rounds (peak memory: the largest)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(f"{r['tool']}:{r['variant']}", []).append(r)
    return {key: {
        "tool": g[0]["tool"], "variant": g[0]["variant"], "settings": g[0]["settings"], "rounds": len(g),
        "pairs_per_s": statistics.median(r["pairs_per_s"] for r in g),
        "step_time_s": statistics.median(r["step_time_s"] for r in g),
        "cpu_s_per_step": statistics.median(r["cpu_s_per_step"] for r in g),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in g),
        "first_loss": statistics.median(r["first_loss"] for r in g),
        "final_loss": statistics.median(r["final_loss"] for r in g),
    } for key, g in groups.items()}


def evaluate(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def target(*args: Any) -> dict[str, Any]:
        return speed_memory_target(*args, rate="pairs_per_s")

    report: dict[str, Any] = {"targets": [], "guard": None}
    kt_default, kt_best, kt_equal = (rows.get(f"kubetune:{v}") for v in ("default", "best", "equal"))
    trl_rows = [r for k, r in rows.items() if k.startswith("trl:")]
    trl_default, trl_plain = rows.get("trl:default"), rows.get("trl:plain")
    if kt_equal and trl_plain:
        report["guard"] = dpo_loss_guard(kt_equal, trl_plain)
    if kt_default and trl_default:
        report["targets"].append(target("dpo default ≥ 2× TRL DPOTrainer default pairs/s at ≤ its memory",
                                        kt_default, trl_default, 2.0, 1.0))
    ours = [r for r in (kt_default, kt_best) if r]
    if ours and trl_rows:
        fastest = max(trl_rows, key=lambda r: r["pairs_per_s"])
        # kubetune's best settings under the memory cap: the faster of default and best that fits, if any
        fits = [r for r in ours if r["peak_rss_gb"] <= 0.8 * fastest["peak_rss_gb"]]
        pick = max(fits or ours, key=lambda r: r["pairs_per_s"])
        report["targets"].append(target(
            f"dpo best (kubetune:{pick['variant']}) ≥ 1.3× the fastest TRL row ({fastest['tool']}:"
            f"{fastest['variant']}) at ≤ 0.8× its memory", pick, fastest, 1.3, 0.8))
    return report


def section(model: str, work: Path, steps: int, rounds: int, runs: list[str],
            run: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Write the pairs, run every spec `rounds` times (alternating), and summarise.

    Args:
        run: `run(spec, model, data, work, steps)` → the run's JSON line (bench.bench.run_one on bench.run_dpo).
    """
    from bench.dpo_data import write_dataset

    data = write_dataset(work / "dpo-data")
    results = []
    for round_ in range(rounds):
        for index, spec in enumerate(runs):
            result = run(spec, model, data, work / f"dpo-{round_}-{index}", steps)
            results.append(result)
            print(f"[dpo round {round_ + 1}] {spec:20s} {result['pairs_per_s']:7.2f} pairs/s  "
                  f"{result['step_time_s']:6.2f} s/step  {result['peak_rss_gb']:5.2f} GB  "
                  f"loss {result['first_loss']:.4f} → {result['final_loss']:.4f}", flush=True)
    rows = aggregate(results)
    return {"steps": steps, "rows": rows, "runs": results, "report": evaluate(rows)}


def markdown(dpo: dict[str, Any]) -> list[str]:
    rows = dpo["rows"]
    base = rows.get("trl:default") or rows.get("trl:plain")
    base_name = "trl:default" if rows.get("trl:default") else "trl:plain"
    lines = ["", f"DPO ({dpo['steps']} steps per run, batch 4 pairs, cutoff 512, LoRA r8, sigmoid β 0.1):", "",
             "| run | settings | pairs/s | step s | CPU s/step | peak RSS GB | first → final loss "
             f"| × {base_name} pairs/s | × {base_name} mem |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for key, row in rows.items():
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "defaults"
        speed = row["pairs_per_s"] / base["pairs_per_s"] if base else float("nan")
        memory = row["peak_rss_gb"] / base["peak_rss_gb"] if base else float("nan")
        lines.append(f"| {key} | {settings} | {row['pairs_per_s']:.2f} | {row['step_time_s']:.2f} | "
                     f"{row['cpu_s_per_step']:.1f} | {row['peak_rss_gb']:.2f} | {row['first_loss']:.4f} → "
                     f"{row['final_loss']:.4f} | {speed:.2f} | {memory:.2f} |")
    guard = dpo["report"]["guard"]
    if guard:
        lines += ["", f"DPO loss guard (kubetune:equal vs trl:plain): first losses {guard['kubetune_first_loss']:.4f} "
                  f"and {guard['reference_first_loss']:.4f} (ln 2 = 0.6931); final {guard['kubetune_loss']:.4f} vs "
                  f"{guard['reference_loss']:.4f}, {guard['relative_diff']:.2%} apart (≤ {guard['tolerance']:.0%}): "
                  f"{'pass' if guard['passed'] else 'FAIL'}."]
    return lines
