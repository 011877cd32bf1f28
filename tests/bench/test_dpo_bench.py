"""The DPO half of `make bench` in miniature: kubetune's dpo stage and TRL's DPOTrainer on a tiny model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.dpo_data import DATASET, DATASET_INFO, make_pairs, write_dataset  # noqa: E402
from bench.targets import dpo_loss_guard  # noqa: E402

FIELDS = {"tool", "variant", "settings", "pairs", "runtime_s", "pairs_per_s", "step_time_s", "cpu_s_per_step", "steps",
          "first_loss", "final_loss", "losses", "peak_rss_gb"}


def run_dpo(tool: str, variant: str, model: Path, data: Path, work: Path, env: dict[str, str]) -> dict:
    # 2 pairs a batch on short rows keeps each run to seconds on a 2-core CPU (the tiny model's 49k-token
    # LM head dominates a step); both tools read the same key
    cmd = [sys.executable, "-m", "bench.run_dpo", "--tool", tool, "--variant", variant, "--model", str(model),
           "--data", str(data), "--work", str(work), "--steps", "2", "--set", "per_device_train_batch_size=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_both_tools_train_the_same_pairs_and_start_at_ln2(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shortest = sorted(make_pairs(40), key=lambda r: sum(len(v) for v in r.values()))[:8]
    (data / f"{DATASET}.json").write_text(json.dumps(shortest))
    (data / "dataset_info.json").write_text(json.dumps({DATASET: DATASET_INFO}))
    env = {**os.environ, "KUBETUNE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    ours = run_dpo("kubetune", "equal", tiny_model_dir, data, tmp_path / "kt", env)
    theirs = run_dpo("trl", "plain", tiny_model_dir, data, tmp_path / "trl", env)
    for result, tool, variant in ((ours, "kubetune", "equal"), (theirs, "trl", "plain")):
        assert result.keys() >= FIELDS
        assert (result["tool"], result["variant"]) == (tool, variant)
        assert result["settings"]["per_device_train_batch_size"] == 2
        assert result["steps"] == 2 and result["pairs"] == 4 and len(result["losses"]) == 2
        assert result["pairs_per_s"] > 0 and result["runtime_s"] > 0 and result["cpu_s_per_step"] > 0
        assert result["peak_rss_gb"] > 0.1
        assert result["first_loss"] == pytest.approx(math.log(2), abs=0.05)
        assert result["first_loss"] == result["losses"][0]
    assert ours["settings"]["gradient_checkpointing"] is False and ours["settings"]["bf16"] is False
    # same tokens, same order: the first batch's summed response log-probs agree between the tools
    assert ours["first_logps_chosen"] == pytest.approx(theirs["first_logps_chosen"], rel=1e-4)
    assert ours["first_logps_rejected"] == pytest.approx(theirs["first_logps_rejected"], rel=1e-4)
    assert dpo_loss_guard(ours, theirs)["passed"]


def test_dpo_loss_guard_needs_ln2_first_and_close_final_losses() -> None:
    ln2 = math.log(2)
    good = dpo_loss_guard({"first_loss": ln2, "final_loss": 0.60}, {"first_loss": ln2 + 1e-4, "final_loss": 0.61})
    assert good["passed"] and good["first_passed"] and good["final_passed"]
    assert good["relative_diff"] == pytest.approx(0.01 / 0.61)
    apart = dpo_loss_guard({"first_loss": ln2, "final_loss": 0.64}, {"first_loss": ln2, "final_loss": 0.60})
    assert not apart["passed"] and apart["first_passed"] and not apart["final_passed"]  # 6.7% apart
    off_start = dpo_loss_guard({"first_loss": 0.75, "final_loss": 0.60}, {"first_loss": ln2, "final_loss": 0.60})
    assert not off_start["passed"] and not off_start["first_passed"] and off_start["final_passed"]
    assert off_start["first_loss_target"] == pytest.approx(ln2)


def test_preference_data_is_deterministic_mixed_and_shares_its_folder(tmp_path: Path) -> None:
    rows = make_pairs()
    assert rows == make_pairs() and len(rows) == 200
    assert all(r["chosen"] != r["rejected"] for r in rows)
    lengths = sorted(len(r["chosen"].split()) for r in rows)
    assert lengths[0] < 60 and lengths[-1] > 300  # short and long responses alike
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"bench_alpaca": {"file_name": "bench_alpaca.json"}}))
    write_dataset(folder, rows=10)
    info = json.loads((folder / "dataset_info.json").read_text())
    assert set(info) == {"bench_alpaca", DATASET} and info[DATASET]["ranking"] is True
    assert len(json.loads((folder / info[DATASET]["file_name"]).read_text())) == 10
