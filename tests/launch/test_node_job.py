"""The job a `nodes: 2` stage asks for: built from the pipeline config, checked against the real APIs' models.

The TrainJob goes through the kubeflow SDK's own generated models (`kubeflow_trainer_api`): `from_dict` keeps only
fields the Trainer API has and `StrictInt`/`StrictStr` refuse wrong types, so a round trip that returns the same
dict proves every field we send exists with the right type. The PyTorchJob's pod template goes through the
kubernetes client's `V1PodTemplateSpec` the same way. Its `runPolicy.schedulingPolicy` has no Python model here
(the v1 SDK is a separate, retired package): the assertions spell the Training Operator's field names
(`minAvailable`, `queue`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.config.errors import ConfigError
from kubetune.config.pipeline import load_pipeline_config
from kubetune.launch.node_job import NAME_LIMIT, job_name, node_job
from kubetune.launch.pytorchjob import pytorchjob_manifest
from kubetune.launch.trainjob import trainjob_manifest

REPO = Path(__file__).resolve().parents[2]
POOL = {"nodes": 2, "gpus": 8, "cpu": "96", "memory": "1000Gi", "queue_name": "a100-queue",
        "node_selector": {"kubetune.io/pool": "a100-8x"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "kubetune.io/spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                         "toleration_seconds": 120}]}


def _config(**sft: object):
    data = yaml.safe_load((REPO / "examples/pipeline_sft.yaml").read_text())
    data.update(dataset_dir=str(REPO / "data"), resources={"sft": {**POOL, **sft}},
                mlflow={"tracking_uri": "http://mlflow.kubeflow:5000", "credentials_secret": "mlflow-creds"},
                s3={"endpoint_url": "http://minio:9000", "credentials_secret": "s3-creds"})
    return load_pipeline_config(text=yaml.safe_dump(data))


def test_the_trainjob_for_two_nodes_of_eight_gpus_is_what_the_trainer_api_describes() -> None:
    from kubeflow_trainer_api import models

    job = node_job(_config(), "sft", "/cache/kubetune/runs/run-1/.sft.rank_spec.json", run_id="run-1",
                   namespace="team-a")
    manifest = trainjob_manifest(job)
    assert models.TrainerV1alpha1TrainJob.from_dict(manifest).to_dict() == manifest  # nothing unknown, nothing lost

    assert manifest["metadata"]["namespace"] == "team-a"
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "a100-queue"
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8", "cpu": "96", "memory": "1000Gi"}
    assert trainer["image"].startswith("ghcr.io/kubetune/kubetune-trainer:")
    assert trainer["command"] == ["python", "-m", "kubetune.components.train_ranks", "--node",
                                  "/cache/kubetune/runs/run-1/.sft.rank_spec.json"]
    env = {e["name"]: e for e in trainer["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds",
                                                                         "key": "AWS_SECRET_ACCESS_KEY",
                                                                         "optional": True}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-creds"
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]  # by reference, never the secret itself
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.kubeflow:5000"
    assert env["KUBETUNE_CACHE"]["value"] == "/cache/kubetune"
    assert not {n for n in env if n.startswith("PET_")}  # reserved: the torch runtime sets them

    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node"
    assert pod["nodeSelector"] == {"kubetune.io/pool": "a100-8x"}
    assert pod["tolerations"][1] == {"key": "kubetune.io/spot", "operator": "Equal", "value": "true",
                                     "effect": "NoExecute", "tolerationSeconds": 120}
    assert pod["volumes"] == [{"name": "kubetune-workspace",
                               "persistentVolumeClaim": {"claimName": "kubetune-model-cache"}}]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [{"name": "kubetune-workspace",
                                                                     "mountPath": "/cache/kubetune"}]}]


def test_the_pytorchjob_has_a_master_and_workers_with_the_same_valid_pod() -> None:
    from kubernetes import client

    job = node_job(_config(nodes=3, trainer="pytorchjob"), "sft", "/cache/spec.json", run_id="r", namespace="ns")
    manifest = pytorchjob_manifest(job)
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    api = client.ApiClient()
    for replica in replicas.values():
        template = replica["template"]
        parsed = api._ApiClient__deserialize(template, "V1PodTemplateSpec")
        assert api.sanitize_for_serialization(parsed) == template
        (container,) = template["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert {"name": "NPROC_PER_NODE", "value": "8"} in container["env"]
        assert template["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "kubetune-model-cache"
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "a100-queue"


def test_a_volcano_gang_trainjob_names_its_runtime_and_queue_as_the_trainer_api_reads_them() -> None:
    """Trainer's Volcano plugin reads the queue from the JobSet template's annotations, which a runtime patch sets;
    the gang itself is the runtime's podGroupPolicy (see test_the_example_runtimes_...)."""
    from kubeflow_trainer_api import models

    job = node_job(_config(pod_group_policy="volcano", volcano_queue="research", runtime="torch-distributed-volcano"),
                   "sft", "/spec.json", run_id="run-1", namespace="team-a")
    manifest = trainjob_manifest(job)
    assert models.TrainerV1alpha1TrainJob.from_dict(manifest).to_dict() == manifest
    assert manifest["spec"]["runtimeRef"]["name"] == "torch-distributed-volcano"
    (patch,) = manifest["spec"]["runtimePatches"]
    template = patch["trainingRuntimeSpec"]["template"]
    assert template["metadata"] == {"annotations": {"scheduling.volcano.sh/queue-name": "research"}}
    assert template["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubetune.io/pool": "a100-8x"}  # the pod patch is still there beside it
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "a100-queue"  # Kueue and Volcano: both

    plain = trainjob_manifest(node_job(_config(), "sft", "/spec.json", run_id="run-1", namespace="team-a"))
    assert "metadata" not in plain["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]


@pytest.mark.parametrize("policy", ["volcano", "coscheduling"])
def test_the_example_runtimes_gang_schedule_with_their_policy_and_scheduler(policy: str) -> None:
    from kubeflow_trainer_api import models

    runtime = yaml.safe_load((REPO / "examples" / "trainer" / f"torch-distributed-{policy}.yaml").read_text())
    assert models.TrainerV1alpha1ClusterTrainingRuntime.from_dict(runtime).to_dict() == runtime
    assert runtime["metadata"]["name"] == f"torch-distributed-{policy}"
    assert policy in runtime["spec"]["podGroupPolicy"]
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"  # the replicated job kubetune's runtime patch and node-0 selector name
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["schedulerName"] == {"volcano": "volcano", "coscheduling": "scheduler-plugins-scheduler"}[policy]
    assert [c["name"] for c in pod["containers"]] == ["node"]
    # and a config naming it is accepted
    node_job(_config(pod_group_policy=policy, runtime=f"torch-distributed-{policy}"), "sft", "/s", run_id="r",
             namespace="ns")


def test_a_gang_pytorchjob_asks_the_operator_for_every_node_at_once() -> None:
    job = node_job(_config(nodes=4, trainer="pytorchjob", pod_group_policy="volcano", volcano_queue="research"),
                   "sft", "/spec.json", run_id="r", namespace="ns")
    assert pytorchjob_manifest(job)["spec"]["runPolicy"] == {
        "cleanPodPolicy": "None", "schedulingPolicy": {"minAvailable": 4, "queue": "research"}}
    cosched = node_job(_config(trainer="pytorchjob", pod_group_policy="coscheduling"), "sft", "/s", run_id="r",
                       namespace="ns")
    assert pytorchjob_manifest(cosched)["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2}
    plain = node_job(_config(trainer="pytorchjob"), "sft", "/s", run_id="r", namespace="ns")
    assert "schedulingPolicy" not in pytorchjob_manifest(plain)["spec"]["runPolicy"]


def test_the_job_name_is_stable_per_run_and_stage_and_a_dns_label() -> None:
    import re

    run = "0f5b2c1e-6a77-4d4b-9a39-1d2f3e4a5b6c"
    assert job_name(run, "sft") == job_name(run, "sft")  # a retried step finds its job
    assert job_name(run, "sft") != job_name(run, "dpo") != job_name(run + "x", "dpo")
    for name in (job_name(run, "sft"), job_name("", "kto"), job_name("RUN_with.Odd/chars" * 9, "dpo")):
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= NAME_LIMIT <= 63, name


@pytest.mark.parametrize(("resources", "key", "words"), [
    ({"evaluate": {"nodes": 2}}, "resources.evaluate.nodes", "not a training step"),
    ({"default": {"nodes": 2}}, "resources.default.nodes", "every step"),
    ({"sft": {"nodes": 2, "gpus": "auto"}}, "resources.sft.gpus", "per node"),
    ({"sft": {"nodes": 0}}, "resources.sft.nodes", "greater than or equal to 1"),
    ({"sft": {"nodes": 2, "trainer": "mpijob"}}, "resources.sft.trainer", "trainjob"),
    ({"sft": {"nodes": 2, "gpus": 8, "pod_group_policy": "kueue"}}, "resources.sft.pod_group_policy",
     "'volcano' or 'coscheduling'"),
    ({"sft": {"nodes": 2, "gpus": 8, "pod_group_policy": "volcano"}}, "resources.sft.runtime",
     "torch-distributed has none — name a ClusterTrainingRuntime with podGroupPolicy.volcano, e.g. `kubectl apply "
     "-f examples/trainer/torch-distributed-volcano.yaml` and set runtime: torch-distributed-volcano"),
    ({"sft": {"gpus": 8, "pod_group_policy": "coscheduling", "runtime": "x"}}, "resources.sft.pod_group_policy",
     "this step runs in one pod (nodes: 1)"),
    ({"default": {"pod_group_policy": "volcano"}}, "resources.default.pod_group_policy", "set it under resources"),
    ({"sft": {"nodes": 2, "gpus": 8, "pod_group_policy": "coscheduling", "runtime": "gang",
              "volcano_queue": "q"}}, "resources.sft.volcano_queue", "needs pod_group_policy: volcano (it is "
                                                                    "coscheduling)"),
    ({"sft": {"nodes": 2, "gpus": 8, "volcano_queue": ""}}, "resources.sft.volcano_queue", "at least 1 character"),
])
def test_nodes_where_they_cannot_run_are_refused_naming_the_key(resources, key, words) -> None:
    data = yaml.safe_load((REPO / "examples/pipeline_sft.yaml").read_text())
    data.update(dataset_dir=str(REPO / "data"), resources=resources)
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(text=yaml.safe_dump(data))
    assert key in [p.key for p in err.value.problems] and words in str(err.value), str(err.value)


def test_nodes_need_a_shared_volume() -> None:
    data = yaml.safe_load((REPO / "examples/pipeline_sft.yaml").read_text())
    data.update(dataset_dir=str(REPO / "data"), resources={"sft": {"nodes": 2, "gpus": 8}}, model_cache={})
    with pytest.raises(ConfigError, match=r"model_cache.pvc \(from pipeline config\): resources.sft.nodes: 2 "
                                          r"needs a volume every node"):
        load_pipeline_config(text=yaml.safe_dump(data))
