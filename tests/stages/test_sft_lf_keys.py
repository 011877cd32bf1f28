"""LLaMA-Factory keys that an sft run acts on: new tokens under LoRA, early stopping, token accuracy,
effective tokens per second."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import log_lines
from transformers import AutoTokenizer
from transformers.trainer_utils import EvalPrediction

from kubetune.config import ConfigError, load_config
from kubetune.evaluate.accuracy import TokenAccuracy
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]
TOOL = "<|kt_tool|>"


def tiny_cfg(model_dir: Path, out: Path, **keys):
    base = {
        "model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 16, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 3e-2,
        "max_steps": 4, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False,
    }
    return load_config(None, {**base, **keys})


def test_new_special_token_is_one_id_trained_under_lora_and_saved(tiny_model_dir: Path, tmp_path: Path,
                                                                   cache_dir: Path) -> None:
    from kubetune.data.setup import stage_data
    from kubetune.model.policy import load_policy

    rows = [{"instruction": f"Call the tool on {word}.", "input": "", "output": f"{TOOL} {word}"}
            for word in ("lamp", "pen", "rope", "chair", "ladder", "cup", "door", "key")]
    data = tmp_path / "tool.json"
    data.write_text(json.dumps(rows))
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, out, dataset=None, data_path=str(data), add_special_tokens=TOOL)

    s = stage_data(cfg, "sft")
    tool_id = s.tokenizer.convert_tokens_to_ids(TOOL)
    assert tool_id >= 49152  # a new id past the SmolLM2 vocabulary
    assert all(row.count(tool_id) == 1 for row in s.data.train["input_ids"])  # one id, never split
    initial, _ = load_policy(cfg, s.model_path, trainable=True, tokenizer=s.tokenizer)  # same seed: same start
    start = initial.get_base_model().get_input_embeddings().weight.detach().clone()

    run_stage(cfg)
    adapter = load_file(out / "adapter_model.safetensors")
    embed = next(v for k, v in adapter.items() if "embed_tokens" in k)
    assert embed.shape[0] == start.shape[0] > len(s.tokenizer)  # resized, in blocks of 64
    assert not torch.allclose(embed[tool_id], start[tool_id]), "the new token's row must be trained"
    # the tiny llama ties its head to the embeddings: one trained copy serves both (ensure_weight_tying)
    assert json.loads((out / "adapter_config.json").read_text())["ensure_weight_tying"] is True
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.convert_tokens_to_ids(TOOL) == tool_id
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] is not None

    # export: the base is resized before the adapter loads, and the merged model keeps the trained row
    from transformers import AutoModelForCausalLM

    from kubetune.export import export

    merged_dir = tmp_path / "merged"
    export(load_config(None, {"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": str(out),
                              "add_special_tokens": TOOL, "export_dir": str(merged_dir)}))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with pytest.raises(ValueError, match="trained with added tokens — set the same add_tokens"):
        export(load_config(None, {"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": str(out),
                                  "export_dir": str(tmp_path / "forgot")}))
    torch.testing.assert_close(merged.get_input_embeddings().weight[tool_id], embed[tool_id])
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    assert AutoTokenizer.from_pretrained(merged_dir).convert_tokens_to_ids(TOOL) == tool_id


def _stop_step(evals: list[float], patience: int) -> int | None:
    """The step at which `patience` evaluations in a row have not beaten the best loss (evaluating every step)."""
    best, waited = float("inf"), 0
    for step, loss in enumerate(evals, start=1):
        best, waited = (loss, 0) if loss < best else (best, waited + 1)
        if waited >= patience:
            return step
    return None


def test_early_stopping_stops_when_eval_loss_stops_improving(tiny_model_dir: Path, tmp_path: Path,
                                                            cache_dir: Path) -> None:
    out = tmp_path / "run"
    # at 3e-2 this tiny run's eval loss falls once, then rises twice: patience 2 stops it at step 4 of 40
    result = run_stage(tiny_cfg(tiny_model_dir, out, max_steps=40, eval_dataset="kubi_sft_eval", max_samples=8,
                                eval_strategy="steps", eval_steps=1, early_stopping_steps=2))
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [entry["eval_loss"] for entry in state["log_history"] if "eval_loss" in entry]
    assert state["global_step"] < 40, "training must stop before max_steps"
    assert state["global_step"] == len(evals) == _stop_step(evals, patience=2)  # no sooner, no later
    assert result.metrics["train_loss"] > 0


def test_early_stopping_needs_evaluations_in_training() -> None:
    with pytest.raises(ConfigError, match="early_stopping_steps.*eval_strategy is no"):
        load_config(None, {"model_name_or_path": "m", "early_stopping_steps": 3})
    with pytest.raises(ConfigError, match="save_steps .* multiple of eval_steps"):
        load_config(None, {"model_name_or_path": "m", "load_best_model_at_end": True, "eval_strategy": "steps",
                           "val_size": 0.1, "eval_steps": 3, "save_steps": 10})
    with pytest.raises(ConfigError, match="compute_accuracy.*not dpo"):
        load_config(None, {"model_name_or_path": "m", "stage": "dpo", "compute_accuracy": True})
    with pytest.raises(ConfigError, match="save_strategy equal to eval_strategy"):
        load_config(None, {"model_name_or_path": "m", "load_best_model_at_end": True, "eval_strategy": "epoch",
                           "val_size": 0.1})
    with pytest.raises(ConfigError, match="include_effective_tokens_per_second.*ppo trains in its own loop"):
        load_config(None, {"model_name_or_path": "m", "stage": "ppo", "reward_model": "r",
                           "include_effective_tokens_per_second": True})
    with pytest.raises(ConfigError, match="eval_accuracy is reported only with compute_accuracy"):
        load_config(None, {"model_name_or_path": "m", "metric_for_best_model": "eval_accuracy"})
    load_config(None, {"model_name_or_path": "m", "load_best_model_at_end": True, "eval_strategy": "steps",
                       "val_size": 0.1, "eval_steps": 5, "save_steps": 10, "early_stopping_steps": 2})


def test_compute_accuracy_reports_eval_accuracy_that_moves_with_training(tiny_model_dir: Path, tmp_path: Path,
                                                                        cache_dir: Path) -> None:
    out = tmp_path / "run"
    result = run_stage(tiny_cfg(tiny_model_dir, out, max_steps=6, eval_dataset="kubi_sft_eval", do_eval=True,
                                eval_strategy="steps", eval_steps=3, compute_accuracy=True,
                                include_effective_tokens_per_second=True))
    accuracies = [line["eval_accuracy"] for line in log_lines(out) if "eval_accuracy" in line]
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)  # steps 3 and 6, then do_eval
    assert 0.0 <= result.metrics["eval_accuracy"] <= 1.0
    # the random tiny model predicts next to nothing at first (0.066 at step 3); by step 6 it has learnt more
    assert accuracies[1] > accuracies[0]

    train = json.loads((out / "train_results.json").read_text())
    tokens = 16 * json.loads((out / "trainer_state.json").read_text())["epoch"]  # 16 rows; epochs run
    assert train["effective_tokens_per_sec"] > 0
    assert result.metrics["train_effective_tokens_per_sec"] == train["effective_tokens_per_sec"]
    assert train["effective_tokens_per_sec"] > tokens / train["train_runtime"]  # rows hold many tokens each
    assert train["effective_tokens_per_sec"] < train["num_input_tokens_seen"] * 2 / train["train_runtime"]


def test_token_accuracy_is_the_mean_of_each_rows_learnt_share() -> None:
    labels = np.array([[-100, 5, 6, 7], [-100, -100, 8, 9], [-100, -100, -100, -100]])
    # predictions at t are for labels at t + 1: row 0 gets 5 and 7 right (2/3), row 1 gets 9 right (1/2)
    preds = np.array([[5, 0, 7, 0], [0, 1, 9, 0], [1, 1, 1, 1]])
    result = TokenAccuracy()(EvalPrediction(predictions=preds, label_ids=labels))
    assert result == {"accuracy": pytest.approx((2 / 3 + 1 / 2) / 2)}  # the row with nothing learnt is skipped


def test_eval_on_each_dataset_reports_one_loss_per_eval_dataset(tiny_model_dir: Path, tmp_path: Path,
                                                               cache_dir: Path) -> None:
    out = tmp_path / "run"
    # with tokenized_path, as a pipeline's train step runs it: that folder holds the main splits, the per-dataset
    # ones are built beside them in the cache
    result = run_stage(tiny_cfg(tiny_model_dir, out, max_steps=2, max_samples=8, eval_dataset="kubi_sft_eval,kubi_sft",
                                eval_on_each_dataset=True, eval_strategy="steps", eval_steps=2, do_eval=True,
                                tokenized_path=str(tmp_path / "tokenized")))
    m = result.metrics
    assert "eval_loss" not in m
    assert m["eval_kubi_sft_eval_loss"] > 0 and m["eval_kubi_sft_loss"] > 0
    assert m["eval_kubi_sft_eval_loss"] != m["eval_kubi_sft_loss"]  # two datasets, two losses
    assert m["eval_kubi_sft_perplexity"] == pytest.approx(np.exp(m["eval_kubi_sft_loss"]))
    logged = {key for line in log_lines(out) if line["current_steps"] == 2 for key in line}
    assert {"eval_kubi_sft_eval_loss", "eval_kubi_sft_loss"} <= logged  # evaluated in training too, each on its own


def test_eval_on_each_dataset_needs_eval_dataset_names() -> None:
    base = {"model_name_or_path": "m", "eval_on_each_dataset": True}
    with pytest.raises(ConfigError, match="eval_on_each_dataset.*none is named"):
        load_config(None, {**base, "val_size": 0.1, "do_eval": True})
    with pytest.raises(ConfigError, match="metric_for_best_model: a_loss"):
        load_config(None, {**base, "eval_dataset": "a,b", "eval_strategy": "steps", "early_stopping_steps": 2})
    with pytest.raises(ConfigError, match="not dpo"):
        load_config(None, {**base, "eval_dataset": "a", "stage": "dpo"})
