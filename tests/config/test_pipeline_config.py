"""The pipeline config builds every step's config the way that step will, so a pipeline fails before it trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.config import ConfigError
from kubetune.config.pipeline import load_pipeline_config

REPO = Path(__file__).resolve().parents[2]


def _pipeline(evaluation: dict | None = None, **sft: object) -> str:
    data = {"name": "p", "model_name_or_path": "m", "template": "chatml", "dataset_dir": str(REPO / "data"),
            "stages": {"sft": {"dataset": "kubi_sft", **sft}}}
    if evaluation is not None:
        data["evaluation"] = evaluation
    return yaml.safe_dump(data)


def test_evaluation_dataset_names_the_evaluation_data() -> None:
    """A platform user writes `evaluation: {dataset: X}`; it used to be dropped, and evaluate failed after training."""
    cfg = load_pipeline_config(text=_pipeline({"dataset": "kubi_sft_eval"}))
    run_cfg = cfg.eval_config("adapter-dir", output_dir="out")
    assert run_cfg.data.eval_dataset == ["kubi_sft_eval"]
    assert run_cfg.model.adapter_name_or_path == ["adapter-dir"]
    assert (run_cfg.train.do_train, run_cfg.train.do_eval, run_cfg.train.do_predict) == (False, True, True)
    assert cfg.eval_config().model.adapter_name_or_path is None  # evaluate-base: the base as configured


def test_evaluation_data_falls_back_to_the_sft_held_out_rows() -> None:
    from_sft = load_pipeline_config(text=_pipeline({}, eval_dataset="kubi_sft_eval")).eval_config()
    assert from_sft.data.eval_dataset == ["kubi_sft_eval"]
    split = load_pipeline_config(text=_pipeline({}, val_size=0.1)).eval_config()
    assert split.data.eval_dataset is None and split.data.val_size == 0.1 and split.data.dataset == ["kubi_sft"]


def test_a_pipeline_without_held_out_data_is_refused_at_load() -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(text=_pipeline({"max_new_tokens": 8}))
    [problem] = err.value.problems
    assert problem.key == "evaluation.eval_dataset"
    assert "held-out" in problem.message and "evaluation.eval_dataset" in problem.hint


def test_both_names_for_the_evaluation_data_are_refused_with_every_other_problem() -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(text=_pipeline({"dataset": "a", "eval_dataset": "b"}, lerning_rate=1e-4))
    keys = [p.key for p in err.value.problems]
    assert "evaluation.dataset" in keys and "stages.sft: lerning_rate" in keys
    assert len(keys) == len(set(keys)), "a shared problem is listed once, not per step"


def test_bad_evaluation_and_export_keys_name_their_step() -> None:
    text = yaml.safe_load(_pipeline({"eval_dataset": "kubi_sft_eval", "max_new_tokenz": 8}))
    text["export"] = {"export_size": "big"}
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(text=yaml.safe_dump(text))
    keys = {p.key for p in err.value.problems}
    assert keys == {"evaluate: max_new_tokenz", "export: export_size"}


def test_shared_llama_factory_keys_are_known_and_refusals_say_why() -> None:
    data = yaml.safe_load(_pipeline({"dataset": "kubi_sft_eval"}))
    cfg = load_pipeline_config(text=yaml.safe_dump({**data, "disable_gradient_checkpointing": True,
                                                    "use_swanlab": False}))
    assert cfg.step_configs()["stages.sft"]().train.gradient_checkpointing is False
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(text=yaml.safe_dump({**data, "use_swanlab": True}))
    assert "SwanLab tracking: not supported" in str(err.value) and "unknown key" not in str(err.value)


def test_ppo_after_sft_is_kept_near_the_sft_model_unless_it_names_its_own_reference() -> None:
    data = yaml.safe_load(_pipeline(evaluation={"eval_dataset": "kubi_sft_eval"}))
    data.update(pipeline="rlhf")
    data["stages"].update(rm={"dataset": "kubi_pref"}, ppo={"dataset": "kubi_sft", "do_sample": True})
    cfg = load_pipeline_config(text=yaml.safe_dump(data))
    base = data["model_name_or_path"]
    assert cfg.reference_after_sft("ppo", "/a/sft") == {"ref_model": base, "ref_model_adapters": "/a/sft"}
    assert cfg.reference_after_sft("rm", "/a/sft") == {}
    ppo = cfg.step_configs(placeholder_outputs=True)["stages.ppo"]()  # validation sees the placeholder
    assert (ppo.method.ref_model, ppo.method.ref_model_adapters) == (base, "pipeline:sft")
    data["stages"]["ppo"]["ref_model"] = base  # the user's own reference (here: the base without SFT) wins
    assert load_pipeline_config(text=yaml.safe_dump(data)).reference_after_sft("ppo", "/a/sft") == {}


@pytest.mark.parametrize("pipeline, stage, keys", [("dpo", "dpo", {"pref_loss": "sigmoid"}), ("kto", "kto", {})])
def test_dpo_and_kto_after_sft_take_the_sft_model_as_their_reference(pipeline: str, stage: str, keys: dict) -> None:
    """DPO's implicit reward is the log-ratio to π_SFT (the DPO paper); with the base as the reference the loss
    started at 0.12 instead of ln 2. Reference-free losses (orpo, simpo) get none."""
    data = yaml.safe_load(_pipeline(evaluation={"eval_dataset": "kubi_sft_eval"}))
    data.update(pipeline=pipeline)
    data["stages"][stage] = {"dataset": "kubi_pref" if stage == "dpo" else "kubi_kto", **keys}
    cfg = load_pipeline_config(text=yaml.safe_dump(data))
    base = data["model_name_or_path"]
    assert cfg.reference_after_sft(stage, "/a/sft") == {"ref_model": base, "ref_model_adapters": "/a/sft"}
    step = cfg.step_configs(placeholder_outputs=True)[f"stages.{stage}"]()
    assert (step.method.ref_model, step.method.ref_model_adapters) == (base, "pipeline:sft")
    if stage == "dpo":
        data["stages"]["dpo"]["pref_loss"] = "orpo"
        orpo = load_pipeline_config(text=yaml.safe_dump(data))
        assert orpo.reference_after_sft("dpo", "/a/sft") == {}
        assert orpo.step_configs(placeholder_outputs=True)["stages.dpo"]().method.ref_model is None


def test_ppo_s_sft_reference_follows_the_base_s_spelling_and_quantisation() -> None:
    data = yaml.safe_load(_pipeline(evaluation={"eval_dataset": "kubi_sft_eval"}))
    data.update(pipeline="rlhf", model_name=data.pop("model_name_or_path"), finetuning_type="qlora")
    data["stages"].update(rm={"dataset": "kubi_pref"}, ppo={"dataset": "kubi_sft", "do_sample": True})
    cfg = load_pipeline_config(text=yaml.safe_dump(data))  # model_name: an accepted alias
    assert cfg.reference_after_sft("ppo", "/a/sft") == {"ref_model": "m", "ref_model_adapters": "/a/sft",
                                                         "ref_model_quantization_bit": 4}
    ppo = cfg.stage_config("ppo", adapter_name_or_path="/a/sft", reward_model="pipeline:rm",
                           **cfg.reference_after_sft("ppo", "/a/sft"))  # as runtime.train builds the step
    assert (ppo.model.quantization_bit, ppo.method.ref_model_quantization_bit) == (4, 4)
