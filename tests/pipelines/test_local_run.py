"""The sft pipeline end to end through kfp.local on a tiny model, tracked in a real `mlflow server`.

Two runs: the first trains well and becomes champion; the second, with a learning rate too small
to learn anything, must not move the champion alias, and must hit the preprocessing cache. A third
fails in its training step: the pipeline's MLflow runs must still end (FAILED), none left RUNNING.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from kubetune.config.pipeline import load_pipeline_config
from kubetune.launch.local_run import run_local, summary

REPO = Path(__file__).resolve().parents[2]


def pipeline_config(model_dir: Path, tracking_uri: str, learning_rate: float, max_steps: int, **sft: object):
    data = {
        "name": "tiny", "pipeline": "sft", "model_name_or_path": str(model_dir), "finetuning_type": "lora",
        "lora_rank": 4, "template": "chatml", "dataset_dir": str(REPO / "data"), "cutoff_len": 48,
        "max_samples": 16, "disable_tqdm": True, "do_sample": False, "max_new_tokens": 4,
        "per_device_eval_batch_size": 8,
        "stages": {"sft": {"dataset": "kubi_sft", "learning_rate": learning_rate, "max_steps": max_steps,
                           "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 50,
                           "plot_loss": True, **sft}},
        "evaluation": {"eval_dataset": "kubi_sft_eval"},
        "promotion": {"registered_model": "tiny-assistant", "metric": "eval_loss", "greater_is_better": False},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": "kubetune-tests"},
    }
    return load_pipeline_config(text=yaml.safe_dump(data))


@pytest.mark.slow
def test_sft_pipeline_runs_tracks_registers_and_gates_promotion(tiny_model_dir: Path, tmp_path: Path,
                                                                cache_dir: Path, mlflow_server: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    good = pipeline_config(tiny_model_dir, mlflow_server, learning_rate=5e-2, max_steps=8)
    console = io.StringIO()
    first = run_local(good, tmp_path / "run1", console=console)
    text = summary(first, good)
    assert first.ok, text
    order = [s["step"] for s in first.steps]
    assert sorted(order) == sorted(["validate", "preprocess-sft", "sft", "evaluate", "export", "register", "promote",
                                    "finalize"])
    # evaluate and export both follow sft and are independent of each other: kfp.local may run either first
    for before, after in (("validate", "preprocess-sft"), ("preprocess-sft", "sft"), ("sft", "evaluate"),
                          ("sft", "export"), ("evaluate", "register"), ("export", "register"), ("register", "promote"),
                          ("promote", "finalize")):
        assert order.index(before) < order.index(after), order
    assert "champion" in text and "registered: tiny-assistant version 1" in text

    # the console: a line per step start and end, progress while training; KFP's dumps stay in the logs
    shown = console.getvalue()
    assert "executorInput" not in shown and "Warning" not in shown, shown
    assert shown.count(" started") == len(order) and shown.count(" succeeded in ") == len(order)
    assert "step 8/8 (100%)" in shown and len(shown.splitlines()) < 40, shown
    assert {"validate", "sft", "evaluate"} <= set(first.step_logs)
    assert "Got executor_input" in first.step_logs["sft"].read_text()
    # the evaluate step scored the baseline (no champion yet: the base model) beside the candidate, same rows
    evaluated = first.find("evaluate")
    scored = evaluated["metrics"]
    assert evaluated["baseline"].startswith("base model"), evaluated["baseline"]
    assert scored["baseline/eval_loss"] > scored["eval_loss"], scored
    assert scored["delta/eval_loss"] == pytest.approx(scored["eval_loss"] - scored["baseline/eval_loss"])
    row = next(line for line in text.splitlines() if line.strip().startswith("eval_loss"))
    assert f"{scored['baseline/eval_loss']:.4f}" in row and f"{scored['eval_loss']:.4f}" in row
    assert "promotion gate" in row
    assert f"{mlflow_server}/#/models/tiny-assistant" in text and "/runs" in text

    # every artifact is present
    kfp_root = tmp_path / "run1" / "kfp"
    assert list(kfp_root.rglob("adapter_model.safetensors")), "the sft adapter artifact"
    assert list(kfp_root.rglob("model.safetensors")), "the merged model artifact"
    assert list(kfp_root.rglob("training_loss.png"))
    html = next(p for p in kfp_root.rglob("html") if p.is_file()).read_text()  # the KFP UI's HTML artifact
    assert "<h2>Metrics</h2>" in html and "base model" in html
    assert "<h2>Training loss</h2>" in html and "data:image/png;base64," in html  # the sft step's curve

    # MLflow: one parent run with nested stage runs holding step metrics
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("kubetune-tests")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1
    assert {r.data.tags.get("mlflow.runName", "") for r in nested} >= {"sft", "evaluate"}
    assert {r.info.status for r in runs} == {"FINISHED"}, "the exit step closed the parent run"
    sft_run = next(r for r in nested if r.data.tags.get("mlflow.runName") == "sft")
    assert len(client.get_metric_history(sft_run.info.run_id, "loss")) == 8
    assert sft_run.data.params["lora_rank"] == "4"
    evaluate_run = next(r for r in nested if r.data.tags.get("mlflow.runName") == "evaluate")
    assert "baseline/eval_loss" in evaluate_run.data.metrics
    assert "evaluation.html" in {a.path for a in client.list_artifacts(evaluate_run.info.run_id)}

    # the registry: version 1 is champion
    version = client.get_model_version_by_alias("tiny-assistant", "champion")
    assert version.version == "1"

    # a second, worse run: registered, not promoted; preprocessing came from the cache
    bad = pipeline_config(tiny_model_dir, mlflow_server, learning_rate=1e-9, max_steps=1)
    second = run_local(bad, tmp_path / "run2")
    assert second.ok, summary(second, bad)
    # the baseline is now the champion's merged model, scored in the same step on the same rows
    assert second.find("evaluate")["baseline"] == "champion v1"
    scored = second.find("evaluate")["metrics"]
    assert scored["baseline/eval_loss"] == pytest.approx(first.find("evaluate")["metrics"]["eval_loss"], rel=1e-3)
    # ... and the gate says which gate failed, with the numbers of both
    reason = second.find("promote")["decision"]["reason"]
    assert "eval_loss beats the baseline by more than 0: FAILED" in reason, reason
    assert f"{scored['eval_loss']:.4g} vs {scored['baseline/eval_loss']:.4g}" in reason, reason
    assert client.get_model_version_by_alias("tiny-assistant", "champion").version == "1"
    assert client.get_model_version_by_alias("tiny-assistant", "challenger").version == "2"
    preprocess_meta = next(kfp for kfp in (tmp_path / "run2" / "kfp").rglob("executor_output.json")
                           if "preprocess" in str(kfp))
    assert '"cache_hit": true' in preprocess_meta.read_text().replace("True", "true")
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_a_failed_pipeline_leaves_no_mlflow_run_running(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path,
                                                        mlflow_server: str) -> None:
    """The sft step fails after the parent and its own run are open (a checkpoint folder with nothing in it
    passes validation, and the Trainer refuses it); the exit step still closes both, as FAILED."""
    from mlflow import MlflowClient

    empty = tmp_path / "checkpoint-0"
    empty.mkdir()
    cfg = pipeline_config(tiny_model_dir, mlflow_server, learning_rate=5e-2, max_steps=2,
                          resume_from_checkpoint=str(empty))
    cfg.mlflow.experiment = "kubetune-tests-failed"
    cfg.evaluation.baseline = False
    result = run_local(cfg, tmp_path / "run", console=io.StringIO())
    text = summary(result, cfg)
    assert not result.ok and "FAILED" in text
    assert result.find("sft")["status"] == "failed"
    assert f"log:   {result.step_logs['sft']}" in text and "Traceback" in result.step_logs["sft"].read_text()
    assert result.find("finalize")["mlflow_status"] == "FAILED"
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("kubetune-tests-failed")
    status = {r.data.tags.get("mlflow.runName"): r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert status.pop("sft") == "FAILED" and list(status.values()) == ["FAILED"], status  # the parent

