"""The sft/pt stage end to end on a tiny model: train, log, plot, checkpoint, resume, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import StopAfter, log_lines

from kubetune.config import load_config
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(model_dir: Path, out: Path, **keys):
    base = {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 16, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 3e-2,
        "max_steps": 6, "logging_steps": 1, "save_steps": 3, "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False,
    }
    return load_config(None, {**base, **keys})



def test_lora_sft_trains_logs_plots_and_saves(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    result = run_stage(tiny_cfg(tiny_model_dir, out, plot_loss=True, max_steps=10))
    lines = log_lines(out)
    assert [line["current_steps"] for line in lines] == list(range(1, 11))
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.1
    assert all(line["throughput"] > 0 for line in lines)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert (out / "training_loss.png").stat().st_size > 1000
    assert (out / "checkpoint-9").is_dir()
    assert result.metrics["train_loss"] > 0
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items()), "LoRA B must have moved from 0"



def test_killed_run_resumes_to_the_same_weights(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage(tiny_cfg(tiny_model_dir, straight))
    with pytest.raises(KeyboardInterrupt):
        run_stage(tiny_cfg(tiny_model_dir, resumed), callbacks=[StopAfter(4)])
    assert (resumed / "checkpoint-3").is_dir() and not (resumed / "adapter_model.safetensors").exists()
    run_stage(tiny_cfg(tiny_model_dir, resumed))  # same config: picks up checkpoint-3 by itself
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    steps = [line["current_steps"] for line in log_lines(resumed)]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # the log was continued, not duplicated


def test_second_run_hits_the_tokenised_cache(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    first = run_stage(tiny_cfg(tiny_model_dir, tmp_path / "a", max_steps=1))
    second = run_stage(tiny_cfg(tiny_model_dir, tmp_path / "b", max_steps=1))
    assert first.metrics["train_tokenized_cache_hit"] == 0.0
    assert second.metrics["train_tokenized_cache_hit"] == 1.0
    changed = run_stage(tiny_cfg(tiny_model_dir, tmp_path / "c", max_steps=1, cutoff_len=48))
    assert changed.metrics["train_tokenized_cache_hit"] == 0.0  # a different cutoff changes the tokens
    forced = run_stage(tiny_cfg(tiny_model_dir, tmp_path / "d", max_steps=1, overwrite_cache=True))
    assert forced.metrics["train_tokenized_cache_hit"] == 0.0


def test_eval_and_predict_write_metrics_and_predictions(tiny_model_dir: Path, tmp_path: Path,
                                                         cache_dir: Path) -> None:
    out = tmp_path / "run"
    result = run_stage(tiny_cfg(tiny_model_dir, out, max_steps=2, eval_dataset="kubi_sft_eval", do_eval=True,
                                eval_strategy="steps", eval_steps=1, plot_loss=True, do_predict=True,
                                max_new_tokens=4, do_sample=False))
    assert result.metrics["eval_perplexity"] > 1
    assert (out / "training_eval_loss.png").is_file()
    assert {line["current_steps"] for line in log_lines(out) if "eval_loss" in line} == {1, 2}
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {"prompt", "predict", "label"} <= rows[0].keys()
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert "predict_rouge-l" in result.metrics


def test_bad_rows_are_reported_with_their_numbers(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "mixed.json"
    good = {"instruction": "Say hi.", "output": "Hi."}
    data.write_text(json.dumps([good, {"instruction": "no answer"}, good, {"output": ""}, good, good]))
    out = tmp_path / "run"
    result = run_stage(tiny_cfg(tiny_model_dir, out, dataset=str(data), max_steps=1))
    report = (out / "bad_rows.txt").read_text()
    assert "row 1" in report and "row 3" in report
    assert "bad_rows" in result.files


def test_pt_stage_packs_plain_text(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    from kubetune.data.setup import stage_data

    out = tmp_path / "pt"
    cfg = tiny_cfg(tiny_model_dir, out, stage="pt", dataset="kubi_pt", max_steps=3, template="empty", cutoff_len=512)
    result = run_stage(cfg)
    assert len(log_lines(out)) == 3
    assert result.layout["rows"] == "packed"
    assert json.loads((out / "run_summary.json").read_text())["layout"]["rows"] == "packed"
    # the documents share rows of at most cutoff_len tokens: fewer rows than documents
    rows = stage_data(cfg, "pt").data.train["input_ids"]
    assert len(rows) < cfg.data.max_samples
    assert all(len(row) <= cfg.data.cutoff_len for row in rows)


def test_neat_packing_trains(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "neat"
    run_stage(tiny_cfg(tiny_model_dir, out, neat_packing=True, max_steps=4, cutoff_len=128))
    lines = log_lines(out)
    assert lines[-1]["loss"] < lines[0]["loss"]
