"""The dpo stage end to end on a tiny model: the loss family, the reference, logging, resume, eval-only."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import StopAfter, log_lines
from transformers import AutoModelForCausalLM, LlamaForCausalLM, TrainerCallback

from kubetune.config import load_config
from kubetune.data.collator import PairwiseCollator
from kubetune.losses.logps import sequence_logps
from kubetune.model.reference import Reference
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]
LOGGED = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
          "logps/rejected", "logits/chosen", "logits/rejected")


def tiny_cfg(model_dir: Path, out: Path, **keys):
    base = {
        "model_name_or_path": str(model_dir), "stage": "dpo", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_pref", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 64,
        "max_samples": 8, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 3e-2,
        "max_steps": 6, "logging_steps": 1, "save_steps": 3, "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False,
        # float32: these tests compare numbers to tight tolerances (accumulated = one batch, reloaded =
        # trained); the default `bf16: auto` would train in bf16 autocast on a CPU with AMX
        "bf16": False,
    }
    return load_config(None, {**base, **keys})



def models_alive() -> int:
    return sum(isinstance(obj, LlamaForCausalLM) for obj in gc.get_objects())


class CountModels(TrainerCallback):
    """Counts the causal LMs in memory when training starts (the policy, and any reference copy)."""

    def __init__(self) -> None:
        gc.collect()
        self.before = models_alive()
        self.loaded = -1

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.loaded = models_alive() - self.before


class KeepModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.model = model


@pytest.mark.parametrize(("keys", "first_loss", "models"), [
    ({}, math.log(2), 1),                                            # LoRA: the reference is the adapter disabled
    ({"dpo_label_smoothing": 0.2}, math.log(2), 1),                  # smoothing keeps ln 2 at a zero margin
    ({"finetuning_type": "full"}, math.log(2), 2),                   # full: a frozen copy of the base
    ({"pref_loss": "hinge"}, 1.0, 1),                                # max(0, 1 − 0)
    ({"pref_loss": "ipo", "pref_beta": 0.1}, 25.0, 1),               # (0 − 1/(2β))²
    ({"pref_loss": "kto_pair"}, 0.5, 1),                             # 1 − σ(β·(0 − 0)) for both halves
    ({"pref_bco_weight": 1.0}, 1.5 * math.log(2), 1),                # (ln 2 + 1·(−2·ln σ(0 − δ=0))) / 2
])
def test_first_step_loss_when_policy_equals_reference(keys: dict, first_loss: float, models: int,
                                                      tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    counter = CountModels()
    run_stage(tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=1, save_strategy="no", **keys), callbacks=[counter])
    first = log_lines(tmp_path / "run")[0]
    assert first["loss"] == pytest.approx(first_loss, abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6) and first["rewards/accuracies"] == 0.0
    assert counter.loaded == models


def test_ld_alpha_moves_the_first_loss_off_ln2_alike_in_every_batch_layout(tiny_model_dir: Path, tmp_path: Path,
                                                                           cache_dir: Path) -> None:
    """LD-DPO scales only the policy's log-probs, so even a policy equal to its reference has a margin: the
    longer response of a pair loses part of its (negative) log-prob. Packed and padded batches agree."""
    losses = {}
    for packing in (None, False):
        out = tmp_path / f"run_{packing}"
        keys = {"packing": packing} if packing is not None else {}
        run_stage(tiny_cfg(tiny_model_dir, out, max_steps=1, save_strategy="no", ld_alpha=0.5, **keys))
        losses[packing] = log_lines(out)[0]["loss"]
    assert abs(losses[None] - math.log(2)) > 1e-3
    assert losses[None] == pytest.approx(losses[False], abs=1e-5)


def test_ref_model_is_loaded_as_a_second_frozen_model(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    counter = CountModels()
    run_stage(tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=1, save_strategy="no",
                       ref_model=str(tiny_model_dir)), callbacks=[counter])
    assert counter.loaded == 2
    assert log_lines(tmp_path / "run")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def separable_pairs(path: Path, n: int, offset: int = 0) -> Path:
    """Pairs whose chosen answer always has one fixed form and the rejected another."""
    rows = [{"instruction": f"Question number {offset + i}: is item {offset + i} ready?",
             "chosen": "Yes, it is ready.", "rejected": "No idea, ask someone else later."} for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


def test_reward_accuracy_rises_on_separable_pairs(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    train = separable_pairs(tmp_path / "train.json", 16)
    held_out = separable_pairs(tmp_path / "eval.json", 8, offset=100)
    out = tmp_path / "run"
    result = run_stage(tiny_cfg(tiny_model_dir, out, dataset=str(train), eval_dataset=str(held_out), max_samples=None,
                                max_steps=8, learning_rate=1e-2, do_eval=True, eval_strategy="steps", eval_steps=8,
                                save_strategy="no", plot_loss=True))
    lines = [line for line in log_lines(out) if "loss" in line]
    assert lines[0]["rewards/accuracies"] == 0.0  # a tie at the start: policy = reference
    assert lines[-1]["rewards/accuracies"] > 0.5 and lines[-1]["loss"] < math.log(2)
    assert set(LOGGED) <= lines[-1].keys()
    assert result.metrics["eval_rewards/accuracies"] > 0.5
    assert result.metrics["eval_rewards/margins"] > 0
    assert (out / "training_rewards_accuracies.png").is_file()
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["metrics"]["eval_rewards/accuracies"] == result.metrics["eval_rewards/accuracies"]


def test_lora_reference_is_the_base_with_the_adapter_disabled(tiny_model_dir: Path, tmp_path: Path,
                                                              cache_dir: Path) -> None:
    keep, counter = KeepModel(), CountModels()
    run_stage(tiny_cfg(tiny_model_dir, tmp_path / "run", max_steps=3, save_strategy="no"), callbacks=[keep, counter])
    assert counter.loaded == 1  # no second copy of the model for the reference
    policy = keep.model
    rows = [{"chosen_input_ids": [1, 20, 30, 40, 50], "chosen_labels": [-100, -100, 30, 40, 50],
             "rejected_input_ids": [1, 20, 31, 41], "rejected_labels": [-100, -100, 31, 41]}]
    batch = PairwiseCollator(pad_token_id=0)(rows)
    packed = PairwiseCollator(pad_token_id=0, pack_to=64)(rows)  # both sequences in one row
    assert packed["input_ids"].shape == (1, 9)
    args = batch["input_ids"], batch["attention_mask"], batch["labels"]
    policy.eval()
    with torch.no_grad():
        reference_logps = Reference(None).logps(policy, batch)
        torch.testing.assert_close(Reference(None).logps(policy, packed), reference_logps, rtol=0, atol=1e-5)
        policy_logps = sequence_logps(policy(input_ids=args[0], attention_mask=args[1]).logits, args[2])[0]
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        base_logps = sequence_logps(base(input_ids=args[0], attention_mask=args[1]).logits, args[2])[0]
    torch.testing.assert_close(reference_logps, base_logps, rtol=0, atol=1e-5)
    assert (policy_logps - base_logps).abs().max() > 1e-3  # the adapter trained, the reference did not move


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_reference_free_losses_train_without_a_reference(loss: str, tiny_model_dir: Path, tmp_path: Path,
                                                         cache_dir: Path) -> None:
    out, counter = tmp_path / "run", CountModels()
    beta = {"orpo": 0.1, "simpo": 2.0}[loss]  # SimPO's paper uses β ≈ 2 (its rewards are per-token means)
    run_stage(tiny_cfg(tiny_model_dir, out, pref_loss=loss, pref_beta=beta, max_samples=4, max_steps=8,
                       save_strategy="no"), callbacks=[counter])
    assert counter.loaded == 1
    losses = [line["loss"] for line in log_lines(out) if "loss" in line]
    assert losses[-1] < losses[0] - 0.05
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items()), "LoRA B must have moved from 0"
    if loss == "orpo":
        assert "sft_loss" in log_lines(out)[0]  # ORPO's built-in SFT term is logged



def test_killed_dpo_run_resumes_to_the_same_adapter(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage(tiny_cfg(tiny_model_dir, straight, pref_ftx=0.5))
    with pytest.raises(KeyboardInterrupt):
        run_stage(tiny_cfg(tiny_model_dir, resumed, pref_ftx=0.5), callbacks=[StopAfter(4)])
    assert (resumed / "checkpoint-3").is_dir() and not (resumed / "adapter_model.safetensors").exists()
    run_stage(tiny_cfg(tiny_model_dir, resumed, pref_ftx=0.5))  # same config: picks up checkpoint-3 by itself
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    lines = log_lines(resumed)
    assert [line["current_steps"] for line in lines] == list(range(1, 7))  # continued, not duplicated
    assert all("sft_loss" in line and "rewards/accuracies" in line for line in lines)
    assert lines[-1]["loss"] == pytest.approx(log_lines(straight)[-1]["loss"], abs=1e-5)


def test_gradient_accumulation_matches_one_large_batch(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """The loss is a mean over pairs: two half batches accumulated must give the same update as one batch."""
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    run_stage(tiny_cfg(tiny_model_dir, whole, max_steps=2, save_strategy="no"))
    run_stage(tiny_cfg(tiny_model_dir, halves, max_steps=2, save_strategy="no", per_device_train_batch_size=2,
                       gradient_accumulation_steps=2))
    a, b = log_lines(whole), log_lines(halves)
    assert [line["loss"] for line in a] == pytest.approx([line["loss"] for line in b], abs=1e-5)
    assert [line["grad_norm"] for line in a] == pytest.approx([line["grad_norm"] for line in b], rel=1e-4)
    assert a[1]["rewards/accuracies"] == b[1]["rewards/accuracies"]


def test_eval_only_reports_preference_metrics_of_a_trained_adapter(tiny_model_dir: Path, tmp_path: Path,
                                                                  cache_dir: Path) -> None:
    out = tmp_path / "run"
    trained = run_stage(tiny_cfg(tiny_model_dir, out, max_samples=16, val_size=4, do_eval=True, save_strategy="no"))
    evaluated = run_stage(tiny_cfg(tiny_model_dir, tmp_path / "eval", max_samples=16, val_size=4, do_train=False,
                                   do_eval=True, do_predict=True, adapter_name_or_path=str(out),
                                   max_new_tokens=4, do_sample=False))
    for key in ("eval_loss", *(f"eval_{name}" for name in LOGGED)):
        assert evaluated.metrics[key] == pytest.approx(trained.metrics[key], abs=1e-4), key
    assert evaluated.metrics["eval_rewards/margins"] != 0  # the reference is the base, not the adapter
    assert not (tmp_path / "eval" / "adapter_model.safetensors").exists()  # nothing trained, nothing saved
    rows = [json.loads(line) for line in (tmp_path / "eval" / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["prompt"].endswith("<|im_start|>assistant\n") and rows[0]["label"]
    assert "predict_rouge-l" in json.loads((tmp_path / "eval" / "run_summary.json").read_text())["metrics"]


# --- rules (kubetune.config.rules_dpo, and the world's in kubetune.validate), checked before any work starts ---


def problems(tmp_path: Path, **keys) -> dict[str, str]:
    """{key: message} of every problem of a dpo config with `keys`: load_config's, else the dpo world rules'."""
    from kubetune.config.errors import ConfigError
    from kubetune.validate.rules import stage_problems

    base = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "stage": "dpo", "dataset": "kubi_pref",
            "dataset_dir": str(REPO / "data"), "output_dir": str(tmp_path / "out")}
    try:
        found = stage_problems(load_config(None, {**base, **keys}))  # the config's rules, then the world's
    except ConfigError as err:
        found = err.problems
    return {p.key: f"{p.message} — {p.hint}" for p in found}


def test_rules_accept_the_examples_shape(tmp_path: Path) -> None:
    assert problems(tmp_path) == {}
    assert problems(tmp_path, pref_loss="simpo", simpo_gamma=1.0, pref_beta=2.0) == {}
    assert problems(tmp_path, dpo_label_smoothing=0.1, pref_ftx=0.5) == {}
    assert problems(tmp_path, finetuning_type="full", ref_model=str(tiny_path(tmp_path))) == {}


def tiny_path(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    return tmp_path / "model"


def test_rule_dpo_needs_ranking_data(tmp_path: Path) -> None:
    assert "no chosen/rejected pairs" in problems(tmp_path, dataset="kubi_sft,kubi_pref")["dataset"]
    assert "kubi_kto" in problems(tmp_path, eval_dataset="kubi_kto")["eval_dataset"]
    # datasets named by path: judged by their columns
    pairs = separable_pairs(tmp_path / "pairs.json", 2)
    assert problems(tmp_path, dataset=str(pairs)) == {}
    single = tmp_path / "single.json"
    single.write_text(json.dumps([{"instruction": "hi", "output": "hello"}]))
    assert "single.json" in problems(tmp_path, dataset=str(single))["dataset"]
    assert "dataset" not in problems(tmp_path, dataset="no_such_dataset")  # preflight reports unknown names


def test_rules_bco_and_ld_alpha(tmp_path: Path) -> None:
    assert problems(tmp_path, pref_loss="kto_pair", pref_bco_weight=0.5, ld_alpha=0.5) == {}
    assert "has none" in problems(tmp_path, pref_loss="simpo", pref_bco_weight=0.5)["pref_bco_weight"]
    assert "0 or more" in problems(tmp_path, pref_bco_weight=-1.0)["pref_bco_weight"]
    assert "[0, 1]" in problems(tmp_path, ld_alpha=1.5)["ld_alpha"]
    assert "only the dpo stage" in problems(tmp_path, stage="kto", dataset="kubi_kto", ld_alpha=0.5)["ld_alpha"]


def test_rules_beta_and_ftx_ranges(tmp_path: Path) -> None:
    assert "positive" in problems(tmp_path, pref_beta=0.0)["pref_beta"]
    assert "0 or more" in problems(tmp_path, pref_ftx=-1.0)["pref_ftx"]


def test_rules_loss_specific_settings(tmp_path: Path) -> None:
    assert "only the sigmoid" in problems(tmp_path, pref_loss="hinge", dpo_label_smoothing=0.1)["dpo_label_smoothing"]
    assert "[0, 0.5)" in problems(tmp_path, dpo_label_smoothing=0.5)["dpo_label_smoothing"]
    assert "only pref_loss: simpo" in problems(tmp_path, simpo_gamma=1.0)["simpo_gamma"]
    assert "0 or more" in problems(tmp_path, pref_loss="simpo", simpo_gamma=-0.5)["simpo_gamma"]


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_rule_reference_free_losses_refuse_a_reference(loss: str, tmp_path: Path) -> None:
    found = problems(tmp_path, pref_loss=loss, ref_model=str(tiny_path(tmp_path)), ref_model_quantization_bit=4)
    assert set(found) == {"ref_model", "ref_model_quantization_bit"}
    assert "uses no reference model" in found["ref_model"]


def test_rules_reference_settings(tmp_path: Path) -> None:
    found = problems(tmp_path, ref_model_quantization_bit=4, ref_model_adapters=str(tmp_path))
    assert "no ref_model is set" in found["ref_model_quantization_bit"]
    assert "no ref_model is set" in found["ref_model_adapters"]
    assert "4 or 8" in problems(tmp_path, ref_model=str(tiny_path(tmp_path)),
                                ref_model_quantization_bit=3)["ref_model_quantization_bit"]
    assert "no such directory" in problems(tmp_path, ref_model=str(tmp_path / "missing"))["ref_model"]
    assert "adapter_config.json" in problems(tmp_path, ref_model=str(tiny_path(tmp_path)),
                                             ref_model_adapters=str(tmp_path))["ref_model_adapters"]


def test_rule_eval_only_full_model_needs_a_reference(tmp_path: Path) -> None:
    assert "copy of itself" in problems(tmp_path, finetuning_type="full", do_train=False)["ref_model"]
    assert problems(tmp_path, finetuning_type="lora", do_train=False) == {}  # LoRA: the base is the reference
    assert problems(tmp_path, finetuning_type="full", do_train=False, pref_loss="orpo") == {}


def test_rule_keys_of_other_stages_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, kto_chosen_weight=2.0, reward_model="saves/rm")
    assert "only the kto stage" in found["kto_chosen_weight"]
    assert "only the ppo stage" in found["reward_model"]


def test_rule_pairs_are_packed_only_within_a_batch_and_prompts_not_trained(tmp_path: Path) -> None:
    found = problems(tmp_path, neat_packing=True, train_on_prompt=True)
    assert "never packed" in found["neat_packing"] and "prompt is masked" in found["train_on_prompt"]
    assert problems(tmp_path, packing=False) == {} and problems(tmp_path, packing=True) == {}  # padding-free on/off


def test_batches_are_padding_free_unless_packing_is_false(tiny_model_dir: Path, tmp_path: Path,
                                                          cache_dir: Path) -> None:
    """Same pairs, same first-step numbers: packed rows (the default) and padded rows (packing: false)."""
    class KeepCollator(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):  # noqa: ANN001
            self.collator = train_dataloader.collate_fn

    seen: dict = {}
    for name, keys in (("packed", {}), ("padded", {"packing": False})):
        keep = KeepCollator()
        run_stage(tiny_cfg(tiny_model_dir, tmp_path / name, max_steps=1, save_strategy="no", **keys), callbacks=[keep])
        seen[name] = log_lines(tmp_path / name)[0]
        seen[name + "_collator"] = keep.collator
    assert seen["packed_collator"].pack_to == 64 and seen["padded_collator"].pack_to is None
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins"):
        assert seen["packed"][key] == pytest.approx(seen["padded"][key], rel=1e-4, abs=1e-4), key


@pytest.mark.parametrize("name", ["dpo_lora", "orpo_lora", "simpo_lora"])
def test_examples_validate(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    monkeypatch.chdir(REPO)
    assert main(["validate", f"examples/{name}.yaml", f"output_dir={tmp_path / 'o'}"]) == 0, capsys.readouterr().err
