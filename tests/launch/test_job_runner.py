"""A launcher step against a stand-in Kubernetes API: create, wait, log, outputs, failure, timeout, retry.

No cluster here: `fake_kube_server.FakeKubeServer` is a real HTTP server answering the CustomObjects and pod
endpoints, and the client is the real kubernetes client pointed at it; every TrainJob it receives is checked
against the kubeflow SDK's models, every PyTorchJob pod template against the kubernetes client's. Nothing runs the
job's pods, so the tests play rank 0 where the job would have: they write its run_summary.json and model files
into the work directory on the "shared volume" (a temp folder) when the server reports the job complete.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from fake_kube_server import FakeKubeServer

from kubetune.components.train_nodes import run_on_nodes
from kubetune.config.pipeline import load_pipeline_config
from kubetune.launch.job_runner import JobFailed, JobRunner, JobTimeout
from kubetune.launch.node_job import NodeJob, job_name

REPO = Path(__file__).resolve().parents[2]


def _job(**kw: object) -> NodeJob:
    defaults = {"name": "kt-sft-run-1-abc", "namespace": "team-a", "kind": "trainjob", "image": "trainer:1",
                "command": ["python", "-m", "kubetune.components.train_ranks", "--node", "/spec.json"],
                "nodes": 2, "gpus": 8, "pvc": "cache", "timeout_s": 60}
    return NodeJob(**{**defaults, **kw})  # type: ignore[arg-type]


def test_a_job_that_completes_streams_node_zeros_log_and_is_deleted() -> None:
    out = io.StringIO()
    with FakeKubeServer(on_create=lambda obj: ["running", "running", "complete"]) as kube:
        JobRunner(_job(), kube.api_client(), poll_s=0.05, out=out).run()
        assert kube.invalid == []
        assert len(kube.made("POST", "/trainjobs")) == 1
        assert kube.made("DELETE", "/trainjobs/kt-sft-run-1-abc")
        assert kube.jobs["kt-sft-run-1-abc"].deleted
        (log_call,) = kube.made("GET", "/log")
        assert log_call.query["container"] == ["node"] and log_call.query["follow"] == ["True"]
        (listing, *_) = kube.made("GET", "/pods")
        assert listing.query["labelSelector"] == ["jobset.sigs.k8s.io/jobset-name=kt-sft-run-1-abc,"
                                                  "jobset.sigs.k8s.io/replicatedjob-name=node,"
                                                  "batch.kubernetes.io/job-completion-index=0"]
    assert "[node-0] step 1 loss 2.0\n[node-0] step 2 loss 1.5\n" in out.getvalue()
    assert "complete" in out.getvalue()


def test_keep_job_keeps_a_completed_job() -> None:
    with FakeKubeServer() as kube:
        JobRunner(_job(keep=True), kube.api_client(), poll_s=0.05, out=io.StringIO()).run()
        assert not kube.made("DELETE") and not kube.jobs["kt-sft-run-1-abc"].deleted


def test_a_failed_job_raises_its_message_and_is_kept_for_inspection() -> None:
    with FakeKubeServer(on_create=lambda obj: ["running", "failed: jobset failed: node-1 exited with code 137"]) \
            as kube:
        with pytest.raises(JobFailed) as err:
            JobRunner(_job(), kube.api_client(), poll_s=0.05, out=io.StringIO()).run()
        assert not kube.jobs["kt-sft-run-1-abc"].deleted and not kube.made("DELETE")
    message = str(err.value)
    assert "TrainJob team-a/kt-sft-run-1-abc failed: jobset failed: node-1 exited with code 137" in message
    assert "kubectl -n team-a describe trainjobs.trainer.kubeflow.org kt-sft-run-1-abc" in message
    assert "kubectl -n team-a logs -l jobset.sigs.k8s.io/jobset-name=kt-sft-run-1-abc" in message


def test_a_job_past_its_timeout_is_deleted_and_named() -> None:
    with FakeKubeServer(on_create=lambda obj: ["running"]) as kube:
        with pytest.raises(JobTimeout, match=r"TrainJob team-a/kt-sft-run-1-abc did not finish within "
                                             r"job_timeout_s=1; it was deleted"):
            JobRunner(_job(timeout_s=1), kube.api_client(), poll_s=0.2, out=io.StringIO()).run()
        assert kube.jobs["kt-sft-run-1-abc"].deleted


def test_a_retried_step_follows_the_job_its_first_attempt_created() -> None:
    out = io.StringIO()
    with FakeKubeServer(on_create=lambda obj: ["running", "running", "running", "complete"]) as kube:
        api = kube.api_client()
        first = JobRunner(_job(timeout_s=1), api, poll_s=0.05, out=io.StringIO())
        first.start()  # the first attempt's pod dies here (pre-empted), its job runs on
        JobRunner(_job(), api, poll_s=0.05, out=out).run()  # the retry: same run, same stage, same name
        assert len(kube.made("POST", "/trainjobs")) == 1  # no second job
    assert "found from an earlier attempt of this step (running)" in out.getvalue()


def test_a_retried_step_replaces_a_failed_job() -> None:
    attempts = iter([["failed: oom"], ["running", "complete"]])
    with FakeKubeServer(on_create=lambda obj: next(attempts)) as kube:
        api = kube.api_client()
        with pytest.raises(JobFailed, match="oom"):
            JobRunner(_job(), api, poll_s=0.05, out=io.StringIO()).run()
        out = io.StringIO()
        JobRunner(_job(), api, poll_s=0.05, out=out).run()
        assert len(kube.made("POST", "/trainjobs")) == 2 and len(kube.made("DELETE")) == 2
    assert "an earlier attempt's job failed (oom); replacing it" in out.getvalue()


def test_a_pytorchjob_is_sent_to_the_training_operator_api() -> None:
    with FakeKubeServer() as kube:
        JobRunner(_job(kind="pytorchjob", nodes=3), kube.api_client(), poll_s=0.05, out=io.StringIO()).run()
        assert kube.invalid == []
        (created,) = kube.made("POST", "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs")
        assert created.body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
        assert kube.made("GET", "/log")[0].query["container"] == ["pytorch"]


def test_the_launcher_shares_its_inputs_and_returns_rank_zeros_metrics(tmp_path: Path) -> None:
    """`run_on_nodes`: the step's inputs are copied onto the shared volume, the spec names them there, the job's
    command reads that spec, and the metrics come from the run_summary.json rank 0 left in the work directory."""
    data = yaml.safe_load((REPO / "examples/pipeline_sft.yaml").read_text())
    data.update(dataset_dir=str(REPO / "data"), resources={"sft": {"nodes": 2, "gpus": 8}})
    cfg = load_pipeline_config(text=yaml.safe_dump(data))
    work = tmp_path / "volume" / "runs" / "run-1" / "sft"
    work.mkdir(parents=True)
    dataset = tmp_path / "kfp-inputs" / "dataset"  # where KFP downloaded the artifact: this pod only
    dataset.mkdir(parents=True)
    (dataset / "train.arrow").write_text("rows")

    seen: dict = {}

    def nodes_run(obj: dict) -> list[str]:
        spec = seen["spec"] = json.loads(Path(obj["spec"]["trainer"]["command"][-1]).read_text())
        assert Path(spec["extra"]["tokenized_path"], "train.arrow").read_text() == "rows"  # on the volume
        (work / "run_summary.json").write_text(json.dumps({"metrics": {"train_loss": 1.25}}))
        (work / "adapter_model.safetensors").write_text("weights")
        return ["running", "complete"]

    with FakeKubeServer(on_create=nodes_run) as kube:
        metrics = run_on_nodes(cfg, cfg.to_yaml(), "sft", {"output_dir": str(work), "tokenized_path": str(dataset)},
                               "", work, "run-1", api_client=kube.api_client(), namespace="team-a", poll_s=0.05)
        assert kube.invalid == []
        assert list(kube.jobs) == [job_name("run-1", "sft")]
    assert metrics == {"train_loss": 1.25}
    assert not (work.parent / ".sft.rank_spec.json").exists()  # the whole config: not left on the volume
    spec = seen["spec"]
    assert spec["extra"]["output_dir"] == str(work)
    assert Path(spec["extra"]["tokenized_path"]).is_relative_to(work.parent)


def test_a_job_whose_pods_were_preempted_ends_the_step_as_preempted(tmp_path: Path) -> None:
    """The nodes' pods get SIGTERM, rank 0 saves `checkpoint-4` and writes `preempted.json` on the shared volume,
    the job fails: the launcher raises `Preempted` (the step then exits 75, and its retry resumes), not JobFailed.
    A job that fails for another reason still raises JobFailed, and a stale marker from an earlier run is cleared."""
    from kubetune.train.preemption import PREEMPTED_FILE, Preempted

    data = yaml.safe_load((REPO / "examples/pipeline_sft.yaml").read_text())
    data.update(dataset_dir=str(REPO / "data"), resources={"sft": {"nodes": 2, "gpus": 8}})
    cfg = load_pipeline_config(text=yaml.safe_dump(data))
    work = tmp_path / "volume" / "runs" / "run-1" / "sft"
    work.mkdir(parents=True)

    def preempted(obj: dict) -> list[str]:
        (work / PREEMPTED_FILE).write_text(json.dumps({"step": 4, "checkpoint": str(work / "checkpoint-4")}))
        return ["running", "failed: jobset failed: node-0 terminated (SIGTERM)"]

    def crashed(obj: dict) -> list[str]:
        return ["running", "failed: node-1 exited with code 1"]

    def launch(kube: FakeKubeServer, run: str) -> None:
        run_on_nodes(cfg, cfg.to_yaml(), "sft", {"output_dir": str(work)}, "", work, run,
                     api_client=kube.api_client(), namespace="team-a", poll_s=0.05)

    with FakeKubeServer(on_create=preempted) as kube, pytest.raises(Preempted) as err:
        launch(kube, "run-1")
    assert err.value.step == 4 and "checkpoint-4" in str(err.value)
    with FakeKubeServer(on_create=crashed) as kube, pytest.raises(JobFailed, match="exited with code 1"):
        launch(kube, "run-2")  # the marker the first run left is not this run's pre-emption
