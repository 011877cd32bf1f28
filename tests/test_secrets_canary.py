"""Canary secrets never reach logs, MLflow params/tags, run_summary.json or a compiled pipeline.

Canaries sit in the environment (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, HF_TOKEN) and in the one
secret config key (`hf_hub_token`). The slow test runs the smallest sft pipeline through kfp.local (the
configuration of tests/pipelines/test_local_run.py, 2 steps) plus `kubetune compile`, then greps every
output: the console, the process's stdout/stderr, each step's log, every file the run wrote (run_summary.json
included), the MLflow store's params and tags read back with MlflowClient, and the compiled YAML. A pipeline
config may hold no secret at all (it is compiled in clear): that is refused, and the refusal does not print it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import yaml

from kubetune.config import ConfigError, load_config
from kubetune.config.pipeline import load_pipeline_config

REPO = Path(__file__).resolve().parents[1]
CANARY = "kt-canary-7f3a9c"
ENV_SECRETS = {"AWS_SECRET_ACCESS_KEY": f"{CANARY}-aws", "MLFLOW_TRACKING_PASSWORD": f"{CANARY}-mlflow",
               "HF_TOKEN": f"{CANARY}-hf"}


def _pipeline(model_dir: Path, **shared: object) -> dict:
    return {
        "name": "canary", "pipeline": "sft", "model_name_or_path": str(model_dir), "finetuning_type": "lora",
        "lora_rank": 4, "template": "chatml", "dataset_dir": str(REPO / "data"), "cutoff_len": 48, "max_samples": 8,
        "disable_tqdm": True, "do_sample": False, "max_new_tokens": 2, "per_device_eval_batch_size": 8,
        "stages": {"sft": {"dataset": "kubi_sft", "learning_rate": 5e-2, "max_steps": 2,
                           "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 50}},
        "evaluation": {"eval_dataset": "kubi_sft_eval", "baseline": False},
        "promotion": {"registered_model": "canary-model"}, **shared,
    }


def _leaks(text: str) -> int:
    return text.count(CANARY)


@pytest.mark.chaos
def test_secret_config_values_are_redacted_or_refused(chaos_row, caplog) -> None:
    """Fast: a secret config value is `**********` in what MLflow logs (`to_flat`), `<redacted>` in errors and
    warnings, and refused (unprinted) in a pipeline config and in URLs."""
    row = chaos_row("Secrets canary (config values: params, errors, warnings, pipeline config)")
    row.detail = "data lost = canary occurrences found"
    found = 0
    row.runs += 1
    cfg = load_config(None, {"model_name_or_path": "x", "hf_hub_token": f"{CANARY}-cfg"})
    assert cfg.model.hf_hub_token.get_secret_value() == f"{CANARY}-cfg"  # still usable where it is needed
    found += _leaks(json.dumps(cfg.to_flat(), default=str)) + _leaks(repr(cfg))
    for bad in ({"hf_hub_token": [CANARY]}, {"ms_hub_token": CANARY}, {"swanlab_api_key": CANARY},
                {"stage": "ppo", "reward_model_type": "api", "reward_model": f"https://u:{CANARY}@rm/score"}):
        row.runs += 1
        with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as err:
            load_config(None, {"model_name_or_path": "x", **bad})
        found += _leaks(str(err.value))
    row.runs += 1
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(text=yaml.safe_dump(
            _pipeline(Path("/m"), hf_hub_token=f"{CANARY}-top", mlflow={"tracking_uri": f"http://u:{CANARY}@h"})))
    assert {"hf_hub_token", "mlflow.tracking_uri"} <= set(err.value.keys())
    found += _leaks(str(err.value)) + _leaks(caplog.text)
    row.data_lost = found
    assert row.data_lost == 0


@pytest.mark.slow
@pytest.mark.chaos
def test_canary_secrets_appear_nowhere_after_a_pipeline_run(chaos_row, tiny_model_dir: Path, tmp_path: Path,
                                                            cache_dir: Path, monkeypatch, capfd) -> None:
    """Slow: a kfp.local sft pipeline of 2 training steps, 4 minutes on this loaded 2-core machine (110 s CPU)."""
    from mlflow import MlflowClient

    from kubetune.cli import main
    from kubetune.launch.local_run import run_local, summary

    row = chaos_row("Secrets canary (env: pipeline run logs, MLflow, run_summary, compiled YAML)")
    row.detail = "data lost = canary occurrences found"
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "canary-user")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "canary-key-id")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the run's own sqlite store, read back below
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(_pipeline(tiny_model_dir)))
    cfg = load_pipeline_config(config_file)

    row.runs += 1
    console = io.StringIO()
    result = run_local(cfg, tmp_path / "run", console=console)
    assert result.ok, summary(result, cfg)
    leaks: dict[str, int] = {"console": _leaks(console.getvalue()) + _leaks(summary(result, cfg))}
    # every file the run wrote: step logs, KFP outputs, run_summary.json, the MLflow store's artifacts
    summaries = list((tmp_path / "run").rglob("run_summary.json"))
    assert summaries, "the sft step writes run_summary.json"
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix != ".db":
            leaks[str(path)] = _leaks(path.read_bytes().decode("utf-8", "replace"))
    # MLflow: every run's params and tags, as the server (here its sqlite store) gives them back
    client = MlflowClient(result.tracking_uri)
    runs = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    assert runs, "the pipeline tracked its runs"
    for run in runs:
        leaks[f"mlflow run {run.info.run_id}"] = _leaks(json.dumps([run.data.params, run.data.tags]))
    for version in client.search_model_versions("name='canary-model'"):
        leaks[f"model version {version.version}"] = _leaks(json.dumps([version.tags, version.source]))

    row.runs += 1
    compiled = tmp_path / "compiled.yaml"
    assert main(["compile", str(config_file), "-o", str(compiled)]) == 0
    leaks["compiled YAML"] = _leaks(compiled.read_text())
    captured = capfd.readouterr()
    leaks["stdout/stderr"] = _leaks(captured.out + captured.err)

    found = {where: n for where, n in leaks.items() if n}
    row.data_lost = sum(found.values())
    assert row.data_lost == 0, found
