"""The rm stage end to end on a tiny model: pairwise loss, accuracy logs, saving, resume, predict, eval, held-out
pairs, rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import StopAfter, log_lines

from kubetune.cli import main
from kubetune.config import ConfigError, load_config
from kubetune.model.reward import load_reward_model, score_ids
from kubetune.stages import run_stage
from kubetune.train.result import StageResult
from kubetune.validate.rules import stage_problems

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(model_dir: Path, out: Path, **keys):
    base = {
        "model_name_or_path": str(model_dir), "stage": "rm", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_pref", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 16, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 3e-2,
        "max_steps": 4, "logging_steps": 1, "save_steps": 2, "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False,
        # float32: these tests compare numbers to tight tolerances (accumulated = one batch, reloaded =
        # trained); the default `bf16: auto` would train in bf16 autocast on a CPU with AMX
        "bf16": False,
    }
    return load_config(None, {**base, **keys})




@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[StageResult, object]:
    """One LoRA rm run shared by the tests below: 12 steps on 16 memorisable pairs, evaluated on the same pairs.

    With gradient checkpointing (the default), so that the value-head model is shown to learn with it.
    """
    out = tmp_path_factory.mktemp("rm") / "run"
    cfg = tiny_cfg(tiny_model_dir, out, max_steps=12, save_steps=6, eval_dataset="kubi_pref", do_eval=True,
                   eval_strategy="steps", eval_steps=6, do_predict=True, plot_loss=True, gradient_checkpointing=True)
    with pytest.MonkeyPatch.context() as patch:  # a private tokenised-data cache, for this run only
        patch.setenv("KUBETUNE_CACHE", str(tmp_path_factory.mktemp("kt-cache")))
        return run_stage(cfg), cfg


def test_loss_falls_and_pair_accuracy_rises(trained: tuple[StageResult, object]) -> None:
    result, _ = trained
    lines = log_lines(result.output_dir)
    train = [line for line in lines if "loss" in line]
    assert [line["current_steps"] for line in train] == list(range(1, 13))
    # a fresh head scores both sides almost alike: -log σ(0) = ln 2
    assert abs(train[0]["loss"] - math.log(2)) < 0.05
    assert sum(line["loss"] for line in train[-4:]) / 4 < train[0]["loss"] - 0.1
    assert all(0.0 <= line["accuracy"] <= 1.0 and "margin" in line for line in train)
    assert sum(line["accuracy"] for line in train[-4:]) / 4 > 0.5
    evals = [line for line in lines if "eval_accuracy" in line]
    assert {line["current_steps"] for line in evals} == {6, 12}
    assert result.metrics["eval_accuracy"] > 0.5 and result.metrics["eval_margin"] > 0
    assert result.metrics["eval_loss"] < math.log(2)
    for plot in ("training_loss.png", "training_accuracy.png", "training_eval_accuracy.png"):
        assert (result.output_dir / plot).stat().st_size > 1000


def test_adapter_head_and_info_are_saved_in_outputs_and_checkpoints(trained: tuple[StageResult, object]) -> None:
    result, _ = trained
    out = result.output_dir
    for folder in (out, out / "checkpoint-6"):
        for name in ("adapter_model.safetensors", "adapter_config.json", "value_head.safetensors", "reward_model.json",
                     "tokenizer.json"):
            assert (folder / name).is_file(), f"{folder.name}/{name} missing"
    head = load_file(out / "value_head.safetensors")
    assert head["summary.weight"].shape == (1, 64) and head["summary.weight"].dtype == torch.float32
    assert not torch.equal(head["summary.weight"], load_file(out / "checkpoint-6" / "value_head.safetensors")
                           ["summary.weight"]), "the head trains"
    info = json.loads((out / "reward_model.json").read_text())
    assert info["finetuning_type"] == "lora" and info["reward_model_type"] == "lora" and info["hidden_size"] == 64


def test_predictions_hold_pair_scores_that_the_reloaded_model_reproduces(trained: tuple[StageResult, object]) -> None:
    result, cfg = trained
    rows = [json.loads(line) for line in (result.output_dir / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n") and rows[0]["chosen_response"]
    assert sum(row["correct"] for row in rows) / 16 == result.metrics["predict_accuracy"]
    assert all(row["correct"] == (row["chosen"] > row["rejected"]) for row in rows)

    # what PPO does: load the reward model alone, score token ids
    reward = load_reward_model(str(result.output_dir), base_model_args=cfg.model, reward_model_type="lora")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    texts = [row["prompt"] + row[side] for row in rows for side in ("chosen_response", "rejected_response")]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    scores = score_ids(reward, ids, pad_token_id=tokenizer.pad_token_id, batch_size=8)
    expected = torch.tensor([row[side] for row in rows for side in ("chosen", "rejected")])
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)


def test_kubetune_eval_reports_pair_accuracy_of_a_trained_rm(trained: tuple[StageResult, object], tmp_path: Path,
                                                              cache_dir: Path) -> None:
    result, cfg = trained
    ev = tmp_path / "eval"
    args = [f"model_name_or_path={cfg.model.model_name_or_path}", f"dataset_dir={REPO / 'data'}", "max_samples=16",
            "cutoff_len=64", "disable_tqdm=true", "template=chatml", "stage=rm", "eval_dataset=kubi_pref",
            f"adapter_name_or_path={result.output_dir}", f"output_dir={ev}", "bf16=false"]  # as trained
    assert main(["eval", *args]) == 0
    summary = json.loads((ev / "run_summary.json").read_text())["metrics"]
    # the same model on the same pairs: the same accuracy and loss as at the end of training
    assert summary["eval_accuracy"] == result.metrics["eval_accuracy"]
    assert summary["eval_loss"] == pytest.approx(result.metrics["eval_loss"], abs=1e-5)
    assert (ev / "generated_predictions.jsonl").is_file()
    assert not (ev / "value_head.safetensors").exists(), "eval must not train or save"


@pytest.mark.parametrize("finetuning_type", ["lora", "freeze", "full"])
def test_killed_run_resumes_to_the_same_weights_and_head(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path,
                                                         finetuning_type: str) -> None:
    keys = {"finetuning_type": finetuning_type, "freeze_trainable_layers": 1}
    if finetuning_type != "lora":
        keys["learning_rate"] = 1e-3
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage(tiny_cfg(tiny_model_dir, straight, **keys))
    with pytest.raises(KeyboardInterrupt):
        run_stage(tiny_cfg(tiny_model_dir, resumed, **keys), callbacks=[StopAfter(3)])
    assert (resumed / "checkpoint-2" / "value_head.safetensors").is_file()
    assert not (resumed / "value_head.safetensors").exists()
    run_stage(tiny_cfg(tiny_model_dir, resumed, **keys))  # same config: picks up checkpoint-2 by itself
    weights = "adapter_model.safetensors" if finetuning_type == "lora" else "model.safetensors"
    for name in (weights, "value_head.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    # and training moved them: a resume that restored nothing would not match, but check the head moved at all
    first = load_file(resumed / "checkpoint-2" / "value_head.safetensors")["summary.weight"]
    assert not torch.equal(first, load_file(resumed / "value_head.safetensors")["summary.weight"])


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    # plain SGD: Adam's first step would hide a loss scaled by the accumulation count
    keys = {"max_steps": 1, "optim": "sgd", "learning_rate": 1.0}
    big = run_stage(tiny_cfg(tiny_model_dir, tmp_path / "big", **keys))
    accumulated = run_stage(tiny_cfg(tiny_model_dir, tmp_path / "acc", **keys, per_device_train_batch_size=2,
                                     gradient_accumulation_steps=2))
    assert log_lines(big.output_dir)[0]["loss"] == pytest.approx(log_lines(accumulated.output_dir)[0]["loss"])
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        a, b = load_file(big.output_dir / name), load_file(accumulated.output_dir / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=f"{name}: {key}")
    # the loss cannot see a constant offset: the head's bias is not trained (Adam would amplify its noise)
    assert load_file(big.output_dir / "value_head.safetensors")["summary.bias"].item() == 0.0


def test_example_trains_and_evaluates_through_the_cli(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    out, ev = tmp_path / "rm", tmp_path / "eval"
    assert main(["validate", "examples/rm_lora.yaml", f"output_dir={out}"]) == 0
    common = [f"model_name_or_path={tiny_model_dir}", "max_samples=20", "cutoff_len=48", "disable_tqdm=true"]
    assert main(["train", "examples/rm_lora.yaml", *common, f"output_dir={out}", "max_steps=2", "eval_steps=2"]) == 0
    assert (out / "value_head.safetensors").is_file() and (out / "generated_predictions.jsonl").is_file()
    assert main(["eval", "examples/rm_lora.yaml", *common, f"adapter_name_or_path={out}", f"output_dir={ev}"]) == 0
    assert "eval_accuracy" in json.loads((ev / "run_summary.json").read_text())["metrics"]


# --- rules: checked before any work ---


def problems(**keys) -> list[str]:
    base = {"model_name_or_path": "m", "stage": "rm", "dataset": "kubi_pref", "dataset_dir": str(REPO / "data")}
    try:
        found = stage_problems(load_config(None, {**base, **keys}))  # the config's rules, then the world's
    except ConfigError as err:
        found = err.problems
    return [str(problem) for problem in found]


def test_rules_want_ranking_data_and_no_packing(tmp_path: Path) -> None:
    assert problems() == []
    (found,) = problems(dataset="kubi_sft")
    assert found.startswith("dataset = 'kubi_sft'") and "ranking" in found and "kubi_pref" in found
    (found,) = problems(eval_dataset="kubi_pref,kubi_sft_eval")
    assert found.startswith("eval_dataset = 'kubi_sft_eval'")
    assert problems(dataset="kubi_prefs") == []  # unknown names are preflight's to report, with a "did you mean"
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"instruction": "q", "chosen": "a", "rejected": "b"}]))
    assert problems(dataset=str(pairs)) == []  # a file's kind is read from its rows
    (found,) = problems(packing=True)
    assert found.startswith("packing") and "pt and sft" in found


def test_rules_want_a_trained_model_to_evaluate(tmp_path: Path) -> None:
    (found,) = problems(do_train=False, output_dir=str(tmp_path))
    assert found.startswith("adapter_name_or_path") and "value_head.safetensors" in found
    (tmp_path / "value_head.safetensors").write_bytes(b"")
    assert problems(do_train=False, output_dir=str(tmp_path)) == []


# --- generalisation: held-out pairs ---


def test_lora_rm_beats_chance_on_held_out_pairs(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """The pairs' preferences follow a few rules (the chosen side keeps the demo's answer format, the rejected one
    hedges or drops it), so a reward model that learnt them ranks pairs it never saw. The tiny model learns them
    in seconds (SmolLM2 took minutes for fewer pairs; its one end-to-end training check is
    tests/stages/test_smollm2_e2e.py)."""
    from transformers import set_seed

    from kubetune.model.loader import resolve_model_path
    from kubetune.model.reward import RewardModelInfo, save_reward_model
    from kubetune.stages.rm import build_reward_model

    common = {
        "model_name_or_path": str(tiny_model_dir), "stage": "rm", "finetuning_type": "lora", "lora_rank": 8,
        "dataset": "kubi_pref", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 200, "val_size": 40, "do_eval": True, "per_device_eval_batch_size": 20, "disable_tqdm": True,
        "gradient_checkpointing": False, "bf16": False, "report_to": "none",
    }
    cfg = load_config(None, {**common, "output_dir": str(tmp_path / "rm"), "max_steps": 30, "learning_rate": 1e-2,
                             "per_device_train_batch_size": 8, "logging_steps": 5, "save_strategy": "no"})
    # "before": the very model training starts from (same seed: LoRA B = 0, the same random head), saved as is
    set_seed(cfg.train.seed)
    save_reward_model(build_reward_model(cfg, resolve_model_path(cfg.model)), tmp_path / "init",
                      RewardModelInfo(cfg.model.model_name_or_path, "lora"))
    before = run_stage(load_config(None, {**common, "do_train": False, "adapter_name_or_path": str(tmp_path / "init"),
                                          "output_dir": str(tmp_path / "before")}))
    after = run_stage(cfg)
    print(f"held-out pair accuracy: before {before.metrics['eval_accuracy']:.3f}, "
          f"after {after.metrics['eval_accuracy']:.3f}")
    # 40 held-out pairs, never trained on (160 were): the rules were learnt, not the pairs
    assert after.metrics["eval_accuracy"] >= 0.75
    assert after.metrics["eval_loss"] < before.metrics["eval_loss"] - 0.1
