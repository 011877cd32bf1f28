"""The promote step's own report: the decision with every gate and its numbers, as an HTML artifact for the KFP UI
and the same file in the version's MLflow run. The component runs as KFP runs it (its artifacts are kfp.dsl objects
on local paths), against a real `mlflow server`."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp.dsl import HTML, Markdown, Metrics

from kubetune.config.pipeline import load_pipeline_config
from kubetune.evaluate.decision_report import publish_decision

REPO = Path(__file__).resolve().parents[2]


def _config(model_dir: Path, tracking_uri: str, registered: str) -> str:
    return load_pipeline_config(text=yaml.safe_dump({
        "name": "tiny", "model_name_or_path": str(model_dir), "template": "chatml", "dataset_dir": str(REPO / "data"),
        "stages": {"sft": {"dataset": "kubi_sft"}}, "evaluation": {"eval_dataset": "kubi_sft_eval"},
        "promotion": {"registered_model": registered, "metric": "eval_loss", "greater_is_better": False,
                      "no_regression": {"predict_rouge-l": 0.5}},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": f"promote-report-{registered}"}})).to_param()


def _registered(uri: str, name: str, folder: Path) -> tuple[str, str]:
    """(version, its run): a merged model registered from a pipeline's parent run, as the register step does."""
    from mlflow import MlflowClient

    from kubetune.export_marker import mark_complete
    from kubetune.tracking.registry import register_model

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(f"promote-report-{name}")
    experiment = found.experiment_id if found else client.create_experiment(f"promote-report-{name}")
    run = client.create_run(experiment, run_name="pipeline").info.run_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    mark_complete(folder)
    return register_model(uri, name, str(folder), run_id=run), run


def test_the_promote_step_writes_and_logs_the_decision_with_every_gate(
        mlflow_server: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from kubetune.components.promote import promote

    name = f"report-{uuid.uuid4().hex[:8]}"
    config = _config(tiny_model_dir, mlflow_server, name)
    version, run = _registered(mlflow_server, name, tmp_path / "merged")
    # better on the gate metric, worse on ROUGE-L by more than its tolerance: not promoted, and the report says why
    measured = {"eval_loss": 1.20, "baseline/eval_loss": 1.50, "predict_rouge-l": 30.0,
                "baseline/predict_rouge-l": 32.0, "predict_bleu-4": 10.0}
    html, decision = HTML(uri=str(tmp_path / "decision_report")), Markdown(uri=str(tmp_path / "decision"))
    promoted = promote(config, version, Metrics(uri=str(tmp_path / "metrics"), metadata=measured), decision, html)
    assert promoted is False
    shown = Path(html.path).read_text()
    assert f"Promotion — {name} v{version}" in shown and f"v{version} kept as challenger" in shown
    assert "<td>eval_loss beats the baseline by more than 0</td><td class='pass'>held</td>" in shown
    assert "<td>predict_rouge-l no worse than the baseline by more than 0.5</td><td class='fail'>failed</td>" in shown
    assert "1.2 vs 1.5: +0.3 better (lower is better)" in shown and "30 vs 32: 2 worse" in shown
    # the metrics the gates read, candidate beside baseline; not every metric of the step
    assert "<td>predict_rouge-l</td><td>30</td><td>32</td><td>-2</td>" in shown and "predict_bleu-4" not in shown
    assert "challenger" in Path(decision.path).read_text()

    client = MlflowClient(mlflow_server)
    logged = [a.path for a in client.list_artifacts(run, f"promotion/v{version}")]
    assert logged == [f"promotion/v{version}/promotion.html"]
    copy = client.download_artifacts(run, logged[0], str(tmp_path / "back"))
    assert Path(copy).read_text() == shown


def test_an_mlflow_that_does_not_answer_leaves_the_report_in_kfp(tiny_model_dir: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = load_pipeline_config(text=_config(tiny_model_dir, dead, "gone"))
    decision: dict[str, Any] = {"promoted": True, "alias": "champion", "reason": "first version", "version": "1",
                                "gates": []}
    with caplog.at_level(logging.WARNING):
        path = publish_decision(cfg, decision, {"eval_loss": 1.0}, tmp_path / "report.html", dead)
    assert "v1 promoted to champion: first version" in path.read_text()
    assert "not logged to MLflow" in caplog.text and "HTML artifact" in caplog.text
