"""The component runtime as plain functions: preemption-safe training, the gate metric, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from kubetune.components import runtime
from kubetune.config.pipeline import load_pipeline_config
from kubetune.validate import preflight_pipeline

REPO = Path(__file__).resolve().parents[2]


def _config(model_dir: Path, **sft: object) -> str:
    data = {
        "name": "tiny", "model_name_or_path": str(model_dir), "lora_rank": 4, "template": "chatml",
        "dataset_dir": str(REPO / "data"), "cutoff_len": 48, "max_samples": 16, "disable_tqdm": True,
        "stages": {"sft": {"dataset": "kubi_sft", "learning_rate": 3e-2, "max_steps": 6, "save_steps": 3,
                           "logging_steps": 1, "per_device_train_batch_size": 4, **sft}},
        "evaluation": {"eval_dataset": "kubi_sft_eval"}, "promotion": {"metric": "eval_loss"},
    }
    return load_pipeline_config(text=yaml.safe_dump(data)).to_param()


class Preempted(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == 4:
            raise KeyboardInterrupt("node pre-empted")


def test_retried_training_step_resumes_from_its_checkpoint(tiny_model_dir: Path, tmp_path: Path,
                                                           cache_dir: Path) -> None:
    config = _config(tiny_model_dir)
    dataset = tmp_path / "dataset"
    runtime.preprocess(config, "sft", str(dataset))
    # the first attempt dies after step 4 (checkpoint-3 is on the persistent work dir)
    from kubetune.stages import run_stage

    cfg = runtime.parse(config).stage_config("sft", output_dir=str(runtime.work_dir("run-1", "sft")),
                                             tokenized_path=str(dataset))
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, callbacks=[Preempted()])
    # the retry: same run id, same step
    metrics = runtime.train(config, "sft", str(dataset), str(tmp_path / "adapter"), run_id="run-1")
    assert metrics["train_loss"] > 0
    log = [json.loads(line) for line in (tmp_path / "adapter" / "trainer_log.jsonl").read_text().splitlines()]
    assert [line["current_steps"] for line in log] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "adapter").glob("checkpoint-*")), "checkpoints stay in the work dir"


def test_gate_metric_names_what_exists(tiny_model_dir: Path) -> None:
    config = _config(tiny_model_dir)
    assert runtime.gate_metric(config, {"eval_loss": 1.5, "bleu": 3.0}) == 1.5
    with pytest.raises(KeyError, match="bleu"):
        runtime.gate_metric(config, {"bleu": 3.0})


def test_eval_report_is_markdown_with_predictions(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "generated_predictions.jsonl").write_text(
        json.dumps({"prompt": "p", "predict": "a|b", "label": "c"}) + "\n")
    report = runtime.eval_report(runtime.parse(_config(tiny_model_dir)), {"eval_loss": 0.5}, tmp_path)
    assert "| eval_loss | 0.5000 |" in report and "a\\|b" in report


@pytest.mark.s3
def test_export_step_uploads_to_s3_when_configured(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path,
                                                   bucket: str, client) -> None:  # noqa: ANN001
    config = json.loads(_config(tiny_model_dir, max_steps=1))
    config["s3"]["artifact_prefix"] = f"s3://{bucket}/kubetune"
    config = json.dumps(config)
    dataset = tmp_path / "dataset"
    runtime.preprocess(config, "sft", str(dataset))
    runtime.train(config, "sft", str(dataset), str(tmp_path / "adapter"), run_id="run-s3")
    meta = runtime.export(config, str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert meta["s3_uri"].startswith(f"s3://{bucket}/kubetune/models/tiny/")
    prefix = meta["s3_uri"].removeprefix(f"s3://{bucket}/")
    keys = {o["Key"].removeprefix(prefix) for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert {"model.safetensors", "config.json", "tokenizer.json", "_SUCCESS"} <= keys


def test_a_qlora_pipeline_validates_its_export_as_the_step_runs_it(tiny_model_dir: Path) -> None:
    """export merges into the unquantised base: validate must not refuse QLoRA's quantization_bit there."""
    data = yaml.safe_load(_config(tiny_model_dir))
    data["quantization_bit"] = 4
    cfg = load_pipeline_config(text=yaml.safe_dump(data))
    preflight_pipeline(cfg)
    assert cfg.stage_config("sft").model.quantization_bit == 4
    assert cfg.export_config("adapter", export_dir="out").model.quantization_bit is None


def test_validate_checks_every_step_against_the_world_at_once(tiny_model_dir: Path, cache_dir: Path) -> None:
    """The evaluate step's data and the promotion gate are checked in validate, not after training."""
    from kubetune.config import ConfigError

    data = yaml.safe_load(_config(tiny_model_dir))
    data["evaluation"] = {"dataset": "kubi_held_out"}  # not in dataset_info.json
    data["promotion"] = {"metric": "rouge-l"}  # the evaluate step measures predict_rouge-l
    config = load_pipeline_config(text=yaml.safe_dump(data)).to_param()  # types and cross-field rules pass
    before = sorted(cache_dir.rglob("*"))
    with pytest.raises(ConfigError) as err:
        runtime.validate(config, run_id="run-v")
    problems = {p.key: p for p in err.value.problems}
    assert set(problems) == {"evaluate: eval_dataset", "promotion.metric"}
    assert "kubi_held_out" in problems["evaluate: eval_dataset"].message
    assert "predict_rouge-l" in problems["promotion.metric"].hint
    assert sorted(cache_dir.rglob("*")) == before, "validation writes nothing"
