"""The pipeline commands end to end: compile, submit and schedule.

submit/schedule talk to tests/launch/fake_kfp_server.py, a recording stand-in for the KFP REST API:
the real backend needs a Kubernetes cluster, which cannot run here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from kubetune.cli import main

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "launch"))

from fake_kfp_server import FakeKfpServer  # noqa: E402


@pytest.fixture()
def pipeline_file(tmp_path: Path) -> Path:
    data = yaml.safe_load((REPO / "examples/pipeline_sft.yaml").read_text())
    data["dataset_dir"] = str(REPO / "data")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_compile_writes_loadable_yaml(pipeline_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    assert main(["compile", str(pipeline_file), "-o", str(out)]) == 0
    assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"] == "kubetune-sft-kubi"


def test_compile_needs_no_data_files_and_says_what_the_cache_key_covers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config compiled for a cluster names data this machine may not have: no world checks at compile time."""
    data = yaml.safe_load((REPO / "examples/pipeline_dpo.yaml").read_text())
    data["dataset_dir"] = str(tmp_path / "not-here")  # no dataset_info.json, no data files
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out.yaml"
    assert main(["compile", str(path), "-o", str(out)]) == 0, capsys.readouterr().err
    assert out.is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "data cannot be read here" in line]
    assert [line.split(": ")[2] for line in warnings] == [
        "preprocess-sft cache key", "preprocess-rm cache key", "preprocess-dpo cache key"]  # the example has an rm
    assert all(line.startswith("kubetune compile: warning: ") and "the key covers the data settings only" in line
               for line in warnings)


def test_bad_pipeline_config_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "model_name_or_path": "m", "lerning_rate": 1,
                                    "stages": {"sft": {"lora_rank": "big"}}}))
    assert main(["compile", str(path), "-o", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err  # an unknown shared key does not hide the steps' problems
    assert "lerning_rate = 1 (from " in err and "did you mean 'learning_rate'" in err
    assert "stages.sft: lora_rank = 'big'" in err and "expected a valid integer" in err
    assert "evaluation.eval_dataset" in err and "names none" in err


def test_submit_and_schedule_reach_the_kfp_api(pipeline_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeKfpServer() as kfp_api:
        assert main(["submit", str(pipeline_file), "--host", kfp_api.url, "--param", "max_steps=5"]) == 0
        runs = kfp_api.calls("POST", "/apis/v2beta1/runs")
        assert len(runs) == 1 and runs[0].json["runtime_config"]["parameters"]["max_steps"] == 5
        assert main(["schedule", str(pipeline_file), "--host", kfp_api.url, "--cron", "0 0 3 * * 0",
                     "--job-name", "weekly"]) == 0
        created = kfp_api.calls("POST", "/apis/v2beta1/recurringruns")
        assert created[-1].json["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
        assert created[-1].json["max_concurrency"] in ("1", 1)


def test_schedule_refuses_five_field_cron(pipeline_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", str(pipeline_file), "--host", "http://127.0.0.1:9", "--cron", "0 3 * * 0"]) == 2
    assert "0 0 3 * * 0" in capsys.readouterr().err
