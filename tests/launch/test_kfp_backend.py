"""submit/schedule against a fake KFP API, asserting the exact requests `kfp.Client` sends.

The Kubeflow Pipelines backend cannot run here (it needs a Kubernetes cluster, and there is none), so
`fake_kfp_server.FakeKfpServer` stands in for it: a local HTTP server that records every request and answers
only the v2beta1 calls these functions make. What these tests prove is the conversation — which pipeline,
version, experiment, run and recurring-run requests go out, with which bodies — not that a real cluster
schedules anything.
"""

# No `from __future__ import annotations` here: kfp reads the components' annotations as real types.
import json
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kfp import compiler, dsl

from kubetune.launch.kfp_api import PORT_FORWARD, KfpBackendError, normalise_host
from kubetune.launch.kfp_backend import schedule, submit, unschedule
from kubetune.launch.kfp_packages import HASH_MARKER, package_hash, pipeline_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ has no __init__.py

from fake_kfp_server import API, FakeKfpServer, RecordedRequest  # noqa: E402

PIPELINE = "kubetune-demo"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def greet(name: str) -> str:
    return f"hello {name}"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def shout(text: str, times: int) -> str:
    return text.upper() * times


def compile_demo(path: Path, default_times: int) -> Path:
    """A two-step pipeline with a str and an int parameter; `default_times` changes the package's bytes."""

    @dsl.pipeline(name=PIPELINE)
    def demo(name: str = "kubetune", times: int = default_times) -> None:
        shout(text=greet(name=name).output, times=times)

    compiler.Compiler().compile(demo, str(path))
    return path


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two compiled packages of the same pipeline that differ only in a parameter default."""
    folder = tmp_path_factory.mktemp("packages")
    return compile_demo(folder / "v1.yaml", 2), compile_demo(folder / "v2.yaml", 3)


@pytest.fixture
def kfp_api() -> Iterator[FakeKfpServer]:
    with FakeKfpServer() as server:
        yield server


def only(requests: list[RecordedRequest]) -> RecordedRequest:
    assert len(requests) == 1, [(r.method, r.path) for r in requests]
    return requests[0]


def name_filter(request: RecordedRequest) -> dict[str, object]:
    return json.loads(request.query["filter"])["predicates"][0]


# --- submit -------------------------------------------------------------------------------------------------------


def test_first_submit_uploads_the_pipeline_gets_or_creates_the_experiment_and_starts_a_run(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    result = submit(v1, host=kfp_api.url, pipeline_name=PIPELINE, run_name="first", params={"times": 3})

    pipeline_id = next(iter(kfp_api.pipelines))
    version_id = kfp_api.versions[pipeline_id][0]["pipeline_version_id"]
    assert kfp_api.routes() == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/pipelines"),  # is there a pipeline of that name?
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/{pipeline_id}/versions"),  # the id of its first version
        ("GET", f"{API}/experiments"),  # get ...
        ("POST", f"{API}/experiments"),  # ... or create
        ("POST", f"{API}/runs"),
    ]
    lookup = only(kfp_api.calls("GET", f"{API}/pipelines"))
    assert name_filter(lookup) == {"operation": 1, "key": "display_name", "stringValue": PIPELINE}

    upload = only(kfp_api.calls("POST", f"{API}/pipelines/upload"))
    assert upload.query["name"] == PIPELINE
    assert upload.files["uploadfile"].content == v1.read_bytes()
    assert upload.files["uploadfile"].filename == "v1.yaml"
    assert f"{HASH_MARKER}{package_hash(v1)}" in upload.query["description"]

    versions = only(kfp_api.calls("GET", f"{API}/pipelines/{pipeline_id}/versions"))
    assert versions.query["sort_by"] == "created_at desc" and versions.query["page_size"] == "1"

    assert name_filter(only(kfp_api.calls("GET", f"{API}/experiments")))["stringValue"] == "kubetune"
    assert only(kfp_api.calls("POST", f"{API}/experiments")).json["display_name"] == "kubetune"

    run = only(kfp_api.calls("POST", f"{API}/runs")).json
    experiment_id = next(iter(kfp_api.experiments))
    assert run["display_name"] == "first"
    assert run["experiment_id"] == experiment_id
    assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": version_id}
    assert run["runtime_config"]["parameters"] == {"times": 3}
    assert "pipeline_spec" not in run  # the run refers to the uploaded version, not an inline copy

    run_id = next(iter(kfp_api.runs))
    assert (result.pipeline_id, result.version_id, result.run_id) == (pipeline_id, version_id, run_id)
    assert result.run_url == f"{kfp_api.url}/#/runs/details/{run_id}"
    assert result.experiment_id == experiment_id and result.uploaded


def test_a_changed_package_becomes_a_new_version_of_the_same_pipeline(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, v2 = packages
    first = submit(v1, host=kfp_api.url, pipeline_name=PIPELINE)
    second = submit(v2, host=kfp_api.url, pipeline_name=PIPELINE, params={"name": "world"})

    assert len(kfp_api.calls("POST", f"{API}/pipelines/upload")) == 1  # not a second pipeline
    new_version = only(kfp_api.calls("POST", f"{API}/pipelines/upload_version"))
    assert new_version.query["pipelineid"] == first.pipeline_id
    assert new_version.files["uploadfile"].content == v2.read_bytes()
    assert f"{HASH_MARKER}{package_hash(v2)}" in new_version.query["description"]
    # <kubetune version>-<UTC time>-<hash prefix>
    assert re.fullmatch(rf"\d+\.\d+\.\d+\S*-\d{{8}}-\d{{6}}-{package_hash(v2)[:12]}", new_version.query["name"])

    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions[first.pipeline_id]) == 2
    assert second.pipeline_id == first.pipeline_id and second.version_id != first.version_id
    assert second.version_name == new_version.query["name"] and second.uploaded
    run = kfp_api.calls("POST", f"{API}/runs")[-1].json
    assert run["pipeline_version_reference"]["pipeline_version_id"] == second.version_id
    assert run["runtime_config"]["parameters"] == {"name": "world"}
    assert len(kfp_api.calls("POST", f"{API}/experiments")) == 1  # found by name the second time


def test_an_identical_package_uploads_nothing_and_runs_the_latest_version(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    first = submit(v1, host=kfp_api.url, pipeline_name=PIPELINE)
    again = submit(v1, host=kfp_api.url, pipeline_name=PIPELINE)

    assert len(kfp_api.calls("POST", f"{API}/pipelines/upload")) == 1
    assert kfp_api.calls("POST", f"{API}/pipelines/upload_version") == []
    assert (again.pipeline_id, again.version_id, again.uploaded) == (first.pipeline_id, first.version_id, False)
    assert len(kfp_api.calls("POST", f"{API}/runs")) == 2  # each submit still starts a run


def test_only_the_latest_version_counts_as_already_uploaded(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, v2 = packages
    for package in (v1, v2, v1):  # rolling back to v1 makes it the latest again
        submit(package, host=kfp_api.url, pipeline_name=PIPELINE)
    uploads = kfp_api.calls("POST", f"{API}/pipelines/upload_version")
    assert [u.files["uploadfile"].content for u in uploads] == [v2.read_bytes(), v1.read_bytes()]


def test_an_explicit_version_name_and_token_are_sent(kfp_api: FakeKfpServer, packages: tuple[Path, Path]) -> None:
    v1, v2 = packages
    submit(v1, host=kfp_api.url, pipeline_name=PIPELINE, existing_token="s3cret")
    result = submit(v2, host=kfp_api.url, pipeline_name=PIPELINE, version_name="v2-by-hand", existing_token="s3cret")

    assert only(kfp_api.calls("POST", f"{API}/pipelines/upload_version")).query["name"] == "v2-by-hand"
    assert result.version_name == "v2-by-hand"
    assert {r.headers.get("authorization") for r in kfp_api.requests} == {"Bearer s3cret"}


def test_a_profile_namespace_scopes_the_pipeline_and_experiment(packages: tuple[Path, Path]) -> None:
    v1, _ = packages
    with FakeKfpServer(multi_user=True) as kfp_api:
        submit(v1, host=kfp_api.url, pipeline_name=PIPELINE, namespace="team-a")

        # kfp.Client skips its health check when given a namespace; kubetune still checks once, first.
        assert kfp_api.routes()[0] == ("GET", f"{API}/healthz")
        assert len(kfp_api.calls("GET", f"{API}/healthz")) == 1
        assert only(kfp_api.calls("GET", f"{API}/pipelines")).query["namespace"] == "team-a"
        assert only(kfp_api.calls("POST", f"{API}/pipelines/upload")).query["namespace"] == "team-a"
        assert only(kfp_api.calls("GET", f"{API}/experiments")).query["namespace"] == "team-a"
        assert only(kfp_api.calls("POST", f"{API}/experiments")).json["namespace"] == "team-a"


def test_kfp_client_links_stay_off_stdout(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    v1, _ = packages
    submit(v1, host=kfp_api.url, pipeline_name=PIPELINE)  # kfp.Client prints "Run details: <link>"
    assert capsys.readouterr().out == ""


def test_unknown_parameters_fail_before_any_request(kfp_api: FakeKfpServer, packages: tuple[Path, Path]) -> None:
    v1, _ = packages
    assert pipeline_parameters(v1) == {"name": "STRING", "times": "NUMBER_INTEGER"}
    with pytest.raises(ValueError, match=r"no parameter \['tims'\][\s\S]*did you mean 'times'"):
        submit(v1, host=kfp_api.url, pipeline_name=PIPELINE, params={"tims": 3})
    with pytest.raises(ValueError, match="not found; build it with `kubetune compile"):
        submit(v1.with_name("missing.yaml"), host=kfp_api.url, pipeline_name=PIPELINE)
    assert kfp_api.requests == []


# --- schedule -----------------------------------------------------------------------------------------------------


def test_schedule_creates_a_recurring_run_with_cron_concurrency_catchup_params_and_mode(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    result = schedule(
        v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="0 0 3 * * sun", job_name="weekly-retrain",
        params={"times": 5}, max_concurrency=2, no_catchup=True, enabled=False,
    )

    assert kfp_api.routes()[-2:] == [("GET", f"{API}/recurringruns"), ("POST", f"{API}/recurringruns")]
    listed = only(kfp_api.calls("GET", f"{API}/recurringruns"))
    assert listed.query["experiment_id"] == result.experiment_id
    assert name_filter(listed)["stringValue"] == "weekly-retrain"

    body = only(kfp_api.calls("POST", f"{API}/recurringruns")).json
    assert body["display_name"] == "weekly-retrain"
    assert body["experiment_id"] == result.experiment_id
    assert body["pipeline_version_reference"] == {
        "pipeline_id": result.pipeline_id, "pipeline_version_id": result.version_id,
    }
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * SUN"}}
    assert body["max_concurrency"] == 2
    assert body["no_catchup"] is True
    assert body["mode"] == "DISABLE"
    assert body["runtime_config"]["parameters"] == {"times": 5}

    assert result.action == "created" and result.removed_ids == ()
    assert result.recurring_run_id == next(iter(kfp_api.recurring_runs))
    assert result.recurring_run_url == f"{kfp_api.url}/#/recurringrun/details/{result.recurring_run_id}"


@pytest.mark.parametrize(
    ("cron", "trigger"),
    [
        ("@every 6h", {"periodic_schedule": {"interval_second": 21600}}),
        ("@daily", {"cron_schedule": {"cron": "0 0 0 * * *"}}),
    ],
)
def test_schedule_sends_intervals_and_macros_in_kfp_terms(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path], cron: str, trigger: dict[str, object]
) -> None:
    v1, _ = packages
    schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron=cron)
    body = only(kfp_api.calls("POST", f"{API}/recurringruns")).json
    assert body["trigger"] == trigger
    assert body["display_name"] == f"{PIPELINE}-schedule"  # the default job name
    assert (body["mode"], body["max_concurrency"], body["no_catchup"]) == ("ENABLE", 1, True)  # the defaults


def test_rescheduling_with_the_same_settings_changes_nothing(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    first = schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="0 0 3 * * 0", params={"times": 2})
    again = schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="0 0 3 * * 0", params={"times": 2})

    assert again.action == "unchanged" and again.recurring_run_id == first.recurring_run_id
    assert len(kfp_api.calls("POST", f"{API}/recurringruns")) == 1
    assert kfp_api.calls("DELETE") == [] and kfp_api.calls("POST", f"{API}/pipelines/upload_version") == []
    assert len(kfp_api.recurring_runs_named(f"{PIPELINE}-schedule")) == 1


def test_rescheduling_with_new_settings_replaces_the_old_recurring_run(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, v2 = packages
    old = schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="0 0 3 * * 0", job_name="retrain")
    new = schedule(v2, host=kfp_api.url, pipeline_name=PIPELINE, cron="0 30 4 * * 1", job_name="retrain")

    # Pause the old one, create the new one, then delete the old one: never two live schedules.
    assert kfp_api.routes()[-3:] == [
        ("POST", f"{API}/recurringruns/{old.recurring_run_id}:disable"),
        ("POST", f"{API}/recurringruns"),
        ("DELETE", f"{API}/recurringruns/{old.recurring_run_id}"),
    ]
    (live,) = kfp_api.recurring_runs_named("retrain")
    assert live["recurring_run_id"] == new.recurring_run_id
    assert live["trigger"] == {"cron_schedule": {"cron": "0 30 4 * * 1"}}
    assert live["pipeline_version_reference"]["pipeline_version_id"] == new.version_id != old.version_id
    assert new.action == "replaced" and new.removed_ids == (old.recurring_run_id,)


def test_rescheduling_removes_duplicates_left_by_others(kfp_api: FakeKfpServer, packages: tuple[Path, Path]) -> None:
    v1, _ = packages
    kept = schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="@weekly", job_name="retrain")
    duplicate = dict(kfp_api.recurring_runs[kept.recurring_run_id], recurring_run_id="dup-1", mode="DISABLE")
    kfp_api.recurring_runs["dup-1"] = duplicate  # e.g. created by hand in the UI

    again = schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="@weekly", job_name="retrain")

    assert again.action == "unchanged" and again.recurring_run_id == kept.recurring_run_id
    assert again.removed_ids == ("dup-1",)
    assert [r["recurring_run_id"] for r in kfp_api.recurring_runs_named("retrain")] == [kept.recurring_run_id]


def test_a_failed_replace_leaves_the_old_recurring_run_enabled(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    old = schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="@daily", job_name="retrain")
    kfp_api.fail("POST", f"{API}/recurringruns", 400, "Invalid input error: the pipeline spec is not valid")

    with pytest.raises(KfpBackendError) as error:
        schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="@hourly", job_name="retrain")

    assert "HTTP 400" in str(error.value) and "the pipeline spec is not valid" in str(error.value)
    assert "create recurring run 'retrain'" in str(error.value)
    assert kfp_api.routes()[-3:] == [
        ("POST", f"{API}/recurringruns/{old.recurring_run_id}:disable"),
        ("POST", f"{API}/recurringruns"),
        ("POST", f"{API}/recurringruns/{old.recurring_run_id}:enable"),
    ]
    (live,) = kfp_api.recurring_runs_named("retrain")
    assert live["recurring_run_id"] == old.recurring_run_id and live["mode"] == "ENABLE"


def test_schedule_checks_cron_and_concurrency_before_any_request(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    with pytest.raises(ValueError, match="Use the 6-field equivalent: '0 0 3 \\* \\* 0'"):
        schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="0 3 * * 0")
    with pytest.raises(ValueError, match="KFP allows 1 to 10"):
        schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="@daily", max_concurrency=0)
    assert kfp_api.requests == []


def test_unschedule_deletes_by_name_and_tolerates_a_missing_experiment(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    made = schedule(v1, host=kfp_api.url, pipeline_name=PIPELINE, cron="@daily", job_name="retrain")
    assert unschedule(host=kfp_api.url, job_name="retrain") == [made.recurring_run_id]
    assert kfp_api.recurring_runs == {}
    assert unschedule(host=kfp_api.url, job_name="retrain", experiment="never-created") == []


# --- errors for people --------------------------------------------------------------------------------------------


def test_an_unreachable_host_says_which_url_and_how_to_port_forward(packages: tuple[Path, Path]) -> None:
    v1, _ = packages
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(KfpBackendError) as error:
        submit(v1, host=f"localhost:{port}", pipeline_name=PIPELINE)
    message = str(error.value)
    assert f"http://localhost:{port}" in message
    assert PORT_FORWARD in message and "token" in message
    assert time.monotonic() - started < 10  # one attempt, not kfp.Client's 5 x 5 s of retries


def test_an_auth_error_reports_the_server_message_once_without_retrying(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    kfp_api.fail("GET", f"{API}/healthz", 401, "Unauthenticated: request is missing a bearer token")
    with pytest.raises(KfpBackendError) as error:
        submit(v1, host=kfp_api.url, pipeline_name=PIPELINE)
    message = str(error.value)
    assert "HTTP 401" in message and "request is missing a bearer token" in message
    assert "bearer token (existing_token)" in message
    assert kfp_api.routes() == [("GET", f"{API}/healthz")]


def test_an_api_4xx_carries_the_servers_message_and_what_was_being_done(
    kfp_api: FakeKfpServer, packages: tuple[Path, Path]
) -> None:
    v1, _ = packages
    kfp_api.fail("POST", f"{API}/runs", 400, "Invalid input error: parameter times must be an integer")
    with pytest.raises(KfpBackendError) as error:
        submit(v1, host=kfp_api.url, pipeline_name=PIPELINE, run_name="r1")
    message = str(error.value)
    assert message.startswith(f"the Kubeflow Pipelines API at {kfp_api.url} refused to start run 'r1'")
    assert "HTTP 400" in message and "parameter times must be an integer" in message


def test_a_taken_version_name_is_explained(kfp_api: FakeKfpServer, packages: tuple[Path, Path]) -> None:
    v1, v2 = packages
    submit(v1, host=kfp_api.url, pipeline_name=PIPELINE)  # its first version is named after the pipeline
    with pytest.raises(KfpBackendError, match=r"HTTP 409[\s\S]*Failed to create a pipeline version[\s\S]*another"):
        submit(v2, host=kfp_api.url, pipeline_name=PIPELINE, version_name=PIPELINE)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("http://localhost:8080/", "http://localhost:8080"),
        ("localhost:8080", "http://localhost:8080"),
        ("ml-pipeline:8888", "http://ml-pipeline:8888"),
        ("ml-pipeline.kubeflow.svc.cluster.local:8888", "http://ml-pipeline.kubeflow.svc.cluster.local:8888"),
        ("kfp.example.com", "https://kfp.example.com"),
        ("https://kfp.example.com/pipeline", "https://kfp.example.com/pipeline"),
    ],
)
def test_hosts_are_normalised(host: str, url: str) -> None:
    assert normalise_host(host) == url


@pytest.mark.parametrize("host", ["", "  ", "ftp://kfp.example.com"])
def test_bad_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="http"):
        normalise_host(host)
