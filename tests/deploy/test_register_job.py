"""The chart's registration Job (scripts/register_pipeline.py) against a stand-in for the KFP API.

The Kubeflow Pipelines backend cannot run here (it needs a Kubernetes cluster with its API server, MySQL and
Argo; there is none), so `tests/launch/fake_kfp_server.FakeKfpServer` stands in for it: a local HTTP server
that records every request and keeps pipelines, versions, experiments and recurring runs the way KFP's
v2beta1 API does. Each test renders the chart with helm, takes the pipeline config from its ConfigMap and the
script's arguments from its Job — exactly what the hook Job would run — and points `--host` at the fake.
What this proves is the conversation over install, upgrade, re-upgrade and disabling the schedule: which
uploads, versions and recurring runs result, and that nothing is duplicated; not that a real cluster runs them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from deploy_conftest import CHART, ROOT, find, pipeline_config_text, prod_args

sys.path.insert(0, str(ROOT / "tests" / "launch"))  # tests/ has no __init__.py
from fake_kfp_server import API, FakeKfpServer  # noqa: E402

_spec = importlib.util.spec_from_file_location("register_pipeline", ROOT / "scripts" / "register_pipeline.py")
register_pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(register_pipeline)

PIPELINE = "kubetune-sft-kubi"
SCHEDULE = "kubetune-sft-kubi-schedule"
UPLOADS = (("POST", f"{API}/pipelines/upload"), ("POST", f"{API}/pipelines/upload_version"))


@pytest.fixture
def kfp_api() -> Iterator[FakeKfpServer]:
    with FakeKfpServer() as server:
        yield server


@pytest.fixture
def job(render, kfp_api: FakeKfpServer, tmp_path: Path, monkeypatch) -> Callable[..., int]:
    """job(*helm_set_args) runs what the chart's hook Job would, for a release rendered with those values."""
    monkeypatch.setenv("HOME", str(tmp_path))  # as in the Job (HOME=/tmp): kfp may keep a context file there
    monkeypatch.chdir(ROOT)  # the image's working directory holds data/, as the repository does

    def _run(*helm_args: str) -> int:
        manifests = render(*helm_args)
        config = tmp_path / "pipeline.yaml"  # the ConfigMap, as mounted at /etc/kubetune/pipeline.yaml
        config.write_text(pipeline_config_text(manifests))
        args = find(manifests, "Job", "-register")["spec"]["template"]["spec"]["containers"][0]["args"]
        args = [f"--config={config}" if a.startswith("--config=") else
                f"--host={kfp_api.url}" if a.startswith("--host=") else a for a in args]
        return register_pipeline.main(args)

    return _run


@pytest.fixture
def changed_config(tmp_path: Path) -> tuple[str, str]:
    """helm args for a values file whose pipeline is the demo with another learning rate."""
    pipeline = yaml.safe_load((CHART / "files" / "demo-pipeline.yaml").read_text())
    pipeline["stages"]["sft"]["learning_rate"] = 1.0e-4
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"pipeline": pipeline}))
    return ("-f", str(values))


def uploads(kfp_api: FakeKfpServer) -> list[tuple[str, str]]:
    return [route for route in kfp_api.routes() if route in UPLOADS]


def recurring_run_changes(kfp_api: FakeKfpServer) -> list[tuple[str, str]]:
    return [(m, p) for m, p in kfp_api.routes() if p.startswith(f"{API}/recurringruns") and m != "GET"]


def versions(kfp_api: FakeKfpServer) -> list[dict]:
    (pipeline,) = kfp_api.pipelines.values()
    assert pipeline["display_name"] == PIPELINE
    return kfp_api.versions[pipeline["pipeline_id"]]


def test_install_uploads_the_pipeline_and_creates_the_schedule(job, kfp_api, capsys) -> None:
    assert job() == 0
    (version,) = versions(kfp_api)
    (schedule,) = kfp_api.recurring_runs_named(SCHEDULE)
    assert schedule["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert schedule["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert (schedule["max_concurrency"], schedule["no_catchup"], schedule["mode"]) == ("1", True, "ENABLE")
    assert kfp_api.runs == {}  # registration starts no run; the schedule (or a person) does
    out = capsys.readouterr().out
    assert f"pipeline '{PIPELINE}': uploaded version" in out and f"schedule '{SCHEDULE}'" in out
    assert ": created" in out


def test_upgrade_with_a_changed_config_adds_a_version_and_replaces_the_schedule(
        job, kfp_api, changed_config, capsys) -> None:
    assert job() == 0
    (old,) = kfp_api.recurring_runs_named(SCHEDULE)
    assert job(*changed_config) == 0
    first, second = versions(kfp_api)
    (new,) = kfp_api.recurring_runs_named(SCHEDULE)  # still exactly one schedule
    assert new["recurring_run_id"] != old["recurring_run_id"]
    assert new["pipeline_version_reference"]["pipeline_version_id"] == second["pipeline_version_id"]
    # the new version carries the new config as its `config` parameter's default
    assert b'"learning_rate":0.0001' in second["_content"] and b'"learning_rate":0.0001' not in first["_content"]
    assert "replaced, removed 1 old" in capsys.readouterr().out


def test_repeating_the_same_upgrade_changes_nothing(job, kfp_api, changed_config, capsys) -> None:
    upgrade = (*changed_config, "--set", "schedule.params.max_steps=200")
    assert job() == 0 and job(*upgrade) == 0
    before = (len(uploads(kfp_api)), len(recurring_run_changes(kfp_api)))
    (schedule,) = kfp_api.recurring_runs_named(SCHEDULE)
    capsys.readouterr()
    assert job(*upgrade) == 0
    assert (len(uploads(kfp_api)), len(recurring_run_changes(kfp_api))) == before  # no upload, create or delete
    assert len(versions(kfp_api)) == 2 and kfp_api.runs == {}
    assert list(kfp_api.recurring_runs) == [schedule["recurring_run_id"]]
    assert schedule["runtime_config"]["parameters"] == {"max_steps": 200}
    out = capsys.readouterr().out
    assert "unchanged, latest version" in out and ": unchanged ->" in out


def test_a_schedule_change_alone_uploads_nothing(job, kfp_api) -> None:
    assert job() == 0
    assert job("--set-string", "schedule.cron=@daily", "--set", "schedule.maxConcurrency=2") == 0
    assert len(uploads(kfp_api)) == 1 and len(versions(kfp_api)) == 1
    (schedule,) = kfp_api.recurring_runs_named(SCHEDULE)
    assert schedule["trigger"]["cron_schedule"]["cron"] == "0 0 0 * * *"
    assert schedule["max_concurrency"] == "2"


def test_disabling_the_schedule_removes_it_and_keeps_the_pipeline(job, kfp_api, capsys) -> None:
    assert job() == 0
    assert job("--set", "schedule.enabled=false") == 0
    assert kfp_api.recurring_runs == {} and len(versions(kfp_api)) == 1
    assert f"schedule disabled: removed 1 recurring run(s) named '{SCHEDULE}'" in capsys.readouterr().out
    assert job("--set", "schedule.enabled=false") == 0  # and again: nothing left to remove, no error
    assert "no recurring run named" in capsys.readouterr().out


def test_named_schedule_and_experiment_from_prod_values(job, kfp_api) -> None:
    assert job(*prod_args()) == 0
    (schedule,) = kfp_api.recurring_runs_named("kubi-weekly-retrain")
    (experiment,) = kfp_api.experiments.values()
    assert experiment["display_name"] == "kubetune-prod"
    assert schedule["experiment_id"] == experiment["experiment_id"]
    assert schedule["runtime_config"]["parameters"] == {"max_steps": 2000}


# --- failures people must be able to read ----------------------------------------------------------------------


def test_an_api_failure_exits_1_and_says_what_failed(job, kfp_api, capsys) -> None:
    kfp_api.fail("POST", f"{API}/pipelines/upload", 500, "database is locked")
    assert job() == 1
    err = capsys.readouterr().err
    assert "register_pipeline: error:" in err and kfp_api.url in err and "database is locked" in err
    assert kfp_api.recurring_runs == {}


def test_an_unreachable_api_exits_1(render, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    config = tmp_path / "pipeline.yaml"
    config.write_text(pipeline_config_text(render()))
    assert register_pipeline.main([f"--config={config}", "--host=http://127.0.0.1:9", "--cron=@daily"]) == 1
    assert "http://127.0.0.1:9" in capsys.readouterr().err


def test_a_bad_config_or_cron_exits_2_before_any_request(kfp_api, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    config = tmp_path / "pipeline.yaml"
    config.write_text((ROOT / "examples" / "pipeline_sft.yaml").read_text() + "lerning_rate: 1.0e-4\n")
    assert register_pipeline.main([f"--config={config}", f"--host={kfp_api.url}", "--cron=@daily"]) == 2
    assert "lerning_rate" in capsys.readouterr().err
    good = ROOT / "examples" / "pipeline_sft.yaml"
    assert register_pipeline.main([f"--config={good}", f"--host={kfp_api.url}", "--cron=0 3 * * 0"]) == 2
    assert "6" in capsys.readouterr().err  # the 5-field crontab line is refused, naming the 6-field form
    assert kfp_api.requests == []
    with pytest.raises(SystemExit):  # argparse: a schedule needs a cron
        register_pipeline.main([f"--config={good}", f"--host={kfp_api.url}"])
