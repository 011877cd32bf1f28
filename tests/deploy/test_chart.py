"""The Helm chart (charts/kubetune): lint, render, Kubernetes API schemas, security scan, values schema, wiring.

There is no cluster here, so the chart is checked as far as it can be without one: `helm lint` and
`helm template` with the default values and with ci/prod-values.yaml, every rendered manifest against the
Kubernetes 1.34 API schemas (kubernetes-validate, strict: unknown fields fail), a checkov scan, and the
behaviour the templates promise — what MLflow runs with, who may reach it, what the steps may do, and that
values flow into the pipeline config the registration Job compiles.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from deploy_conftest import (
    CHART,
    INSTALL,
    KUBERNETES_VERSION,
    NAMESPACE,
    PROD_VALUES,
    ROOT,
    find,
    pipeline_config_text,
    prod_args,
    run_helm,
)

from kubetune.config.pipeline import load_pipeline_config

VALUES = {"default": (), "prod": tuple(prod_args())}
PROD = yaml.safe_load(PROD_VALUES.read_text())
MLFLOW = "kt-kubetune-mlflow"
TRACKING_URI = f"http://{MLFLOW}.{NAMESPACE}.svc.cluster.local:5000"


def kubernetes_validate():  # noqa: ANN201
    """The kubernetes-validate module, or a failure that says how to install it."""
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed; run: {INSTALL['kubernetes-validate']}")
    return kubernetes_validate


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(manifest)["containers"]
    return only


def env(manifest: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the valueFrom mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifest).get("env", [])}


def helm_error(helm, *args: str) -> str:  # noqa: ANN001
    result = run_helm(helm, "template", "kt", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, f"helm template {' '.join(args)} should have failed"
    return result.stderr


# --- lint, render, API schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_is_clean(helm, values: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *VALUES[values])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_and_prod_render_the_expected_objects(render) -> None:
    kinds = lambda docs: sorted((m["kind"], m["metadata"]["name"]) for m in docs)  # noqa: E731
    assert kinds(render()) == [
        ("ConfigMap", "kt-kubetune-pipeline"), ("Deployment", MLFLOW), ("Job", "kt-kubetune-register"),
        ("NetworkPolicy", MLFLOW), ("NetworkPolicy", "kt-kubetune-register"),
        ("PersistentVolumeClaim", "kt-kubetune-mlflow-data"), ("Role", "kt-kubetune-steps"),
        ("RoleBinding", "kt-kubetune-steps"), ("Secret", "kt-kubetune-mlflow-store"),
        ("Service", MLFLOW), ("ServiceAccount", "kt-kubetune"),
    ]
    # prod: PostgreSQL and S3 from existing Secrets (none written), no sqlite volume, an ingress, the model cache
    assert kinds(render(*VALUES["prod"])) == [
        ("ConfigMap", "kt-kubetune-pipeline"), ("Deployment", MLFLOW), ("Ingress", MLFLOW),
        ("Job", "kt-kubetune-register"), ("NetworkPolicy", MLFLOW), ("NetworkPolicy", "kt-kubetune-register"),
        ("PersistentVolumeClaim", "kubetune-model-cache"), ("Role", "kt-kubetune-steps"),
        ("RoleBinding", "kt-kubetune-steps"), ("Service", MLFLOW), ("ServiceAccount", "kt-kubetune"),
    ]


@pytest.mark.parametrize("values", VALUES)
def test_every_manifest_validates_against_the_kubernetes_api(render, values: str) -> None:
    validator = kubernetes_validate()
    for manifest in render(*VALUES[values]):
        assert manifest["metadata"]["namespace"] == NAMESPACE, manifest["metadata"]["name"]
        try:
            validator.validate(manifest, KUBERNETES_VERSION, strict=True)
        except validator.ValidationError as err:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']} ({values}): {err}")


def test_the_api_schema_check_does_catch_a_bad_manifest(render) -> None:
    """A control for the test above: a misspelt field and a wrongly typed one are refused."""
    validator = kubernetes_validate()
    deployment = find(render(), "Deployment", "-mlflow")
    misspelt = yaml.safe_load(yaml.safe_dump(deployment))
    container(misspelt)["readinessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(validator.ValidationError):
        validator.validate(misspelt, KUBERNETES_VERSION, strict=True)
    mistyped = yaml.safe_load(yaml.safe_dump(deployment))
    mistyped["spec"]["replicas"] = "two"
    with pytest.raises(validator.ValidationError):
        validator.validate(mistyped, KUBERNETES_VERSION, strict=True)


# --- security -------------------------------------------------------------------------------------------------


def test_checkov_finds_nothing_in_the_manifests(checkov_report) -> None:
    kubernetes = checkov_report["kubernetes"]
    failed = [f"{c['check_id']} {c['check_name']} — {c['resource']}" for c in kubernetes["results"]["failed_checks"]]
    assert failed == []
    assert kubernetes["summary"]["parsing_errors"] == 0
    scanned = {c["file_path"].rsplit("/", 1)[-1] for c in kubernetes["results"]["passed_checks"]}
    assert scanned == {"default.yaml", "prod.yaml"}


def test_every_checkov_suppression_is_justified_and_documented(checkov_report) -> None:
    """Suppressions live in the manifests' annotations and the Dockerfiles' comments, each with its reason,
    and each check skipped is listed in charts/kubetune/README.md or images/README.md."""
    docs = (CHART / "README.md").read_text() + (ROOT / "images" / "README.md").read_text()
    skipped = [c for report in checkov_report.values() for c in report["results"]["skipped_checks"]]
    assert {c["check_id"] for c in skipped} == {"CKV_K8S_43", "CKV_K8S_35", "CKV_DOCKER_2"}
    for check in skipped:
        reason = check["check_result"]["suppress_comment"].strip()
        assert len(reason) > 40, f"{check['check_id']} on {check['resource']}: no reason given ({reason!r})"
        assert check["check_id"] in docs, f"{check['check_id']} is suppressed but not listed in a README"


def test_the_digest_suppression_goes_away_with_a_digest(render) -> None:
    digest = "sha256:" + "a" * 64
    manifests = render("--set", f"images.runtime.digest={digest}")
    for manifest in (find(manifests, "Job"), find(manifests, "Deployment")):  # MLflow runs the runtime image too
        assert container(manifest)["image"] == f"ghcr.io/kubetune/kubetune-runtime:0.1.0@{digest}"
        assert not any("CKV_K8S_43" in str(v) for v in manifest["metadata"]["annotations"].values())


@pytest.mark.parametrize("values", VALUES)
def test_pods_run_locked_down(render, values: str) -> None:
    for manifest in render(*VALUES[values]):
        if manifest["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(manifest)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container(manifest)["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        # the read-only root needs a writable /tmp, from an emptyDir
        mounts = {m["mountPath"]: m["name"] for m in container(manifest)["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert container(manifest)["resources"]["limits"]["memory"]


# --- MLflow -----------------------------------------------------------------------------------------------------


def test_mlflow_default_is_sqlite_on_a_volume_with_artifacts_proxied_to_s3(render) -> None:
    manifests = render()
    deployment = find(manifests, "Deployment", "-mlflow")
    args = container(deployment)["args"]
    assert "--serve-artifacts" in args and "--artifacts-destination=s3://kubetune/mlflow" in args
    store = env(deployment)["MLFLOW_BACKEND_STORE_URI"]["secretKeyRef"]
    secret = find(manifests, "Secret", "-mlflow-store")
    assert store == {"name": secret["metadata"]["name"], "key": "MLFLOW_BACKEND_STORE_URI"}
    # the sqlite file sits on the PVC's mount, and only one pod at a time may open it
    assert secret["stringData"]["MLFLOW_BACKEND_STORE_URI"] == "sqlite:////mlflow/mlflow.db"
    mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
    claim = {v["name"]: v for v in pod_spec(deployment)["volumes"]}[mounts["/mlflow"]]["persistentVolumeClaim"]
    pvc = find(manifests, "PersistentVolumeClaim", "-mlflow-data")
    assert claim["claimName"] == pvc["metadata"]["name"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"} and deployment["spec"]["replicas"] == 1
    # the variable is what `mlflow server --backend-store-uri` falls back to (so the URI stays out of the args)
    from mlflow.cli import server

    assert next(p for p in server.params if p.name == "backend_store_uri").envvar == "MLFLOW_BACKEND_STORE_URI"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(deployment)[probe]["httpGet"]["path"] == "/health"
    # no S3 keys given: the pod relies on an IAM role, and reads no Secret for them
    assert "AWS_ACCESS_KEY_ID" not in env(deployment)


def test_mlflow_prod_reads_postgres_and_s3_from_existing_secrets(render) -> None:
    manifests = render(*VALUES["prod"])
    deployment = find(manifests, "Deployment", "-mlflow")
    variables = env(deployment)
    assert variables["MLFLOW_BACKEND_STORE_URI"] == {"secretKeyRef": {"name": "mlflow-db", "key": "uri"}}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert variables[key] == {"secretKeyRef": {"name": "kubetune-s3", "key": key}}
    assert variables["MLFLOW_S3_ENDPOINT_URL"] == PROD["s3"]["endpoint"]
    assert "--artifacts-destination=s3://acme-ml-artifacts/mlflow" in container(deployment)["args"]
    assert deployment["spec"]["replicas"] == 2 and "strategy" not in deployment["spec"]
    assert "/mlflow" not in {m["mountPath"] for m in container(deployment)["volumeMounts"]}
    assert not [m for m in manifests if m["kind"] == "Secret"]  # nothing secret passes through Helm
    ingress = find(manifests, "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "mlflow.ml.acme.example"
    assert ingress["spec"]["tls"] == [{"hosts": ["mlflow.ml.acme.example"], "secretName": "mlflow-tls"}]


@pytest.mark.parametrize("values", VALUES)
def test_mlflow_accepts_the_host_names_its_clients_use(render, values: str) -> None:
    """MLflow 3 answers only requests whose Host header it allows (DNS-rebinding protection), and the steps
    call it by its Service's DNS name. Checked with MLflow's own matcher, on the list the chart renders."""
    from mlflow.environment_variables import MLFLOW_SERVER_ALLOWED_HOSTS
    from mlflow.server.security_utils import is_allowed_host_header

    manifests = render(*VALUES[values])
    allowed = env(find(manifests, "Deployment", "-mlflow"))[MLFLOW_SERVER_ALLOWED_HOSTS.name].split(",")
    tracking_uri = yaml.safe_load(pipeline_config_text(manifests))["mlflow"]["tracking_uri"]
    for host in (tracking_uri.split("://", 1)[1], f"{MLFLOW}:5000", f"{MLFLOW}.{NAMESPACE}", "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example.com")
    assert is_allowed_host_header(allowed, "mlflow.ml.acme.example") == (values == "prod")  # the ingress host


def test_network_policy_admits_only_the_pipeline(render) -> None:
    default = find(render(), "NetworkPolicy", "-mlflow")["spec"]
    assert default["policyTypes"] == ["Ingress"]
    assert default["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"
    assert default["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"podSelector": {}}]}]
    prod = find(render(*VALUES["prod"]), "NetworkPolicy", "-mlflow")["spec"]
    assert prod["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"pipelines.kubeflow.org/v2_component": "true"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
    ]
    # the registration Job serves nothing: no ingress at all
    register = find(render(), "NetworkPolicy", "-register")["spec"]
    assert register["ingress"] == [] and register["podSelector"]["matchLabels"]["app.kubernetes.io/component"] \
        == "register"


# --- RBAC -------------------------------------------------------------------------------------------------------


def test_steps_may_read_their_two_secrets_and_nothing_more_by_default(render) -> None:
    manifests = render()
    role = find(manifests, "Role", "-steps")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                              "resourceNames": ["kt-kubetune-s3", "mlflow-credentials"], "verbs": ["get"]}]
    binding = find(manifests, "RoleBinding", "-steps")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": NAMESPACE}]


def test_trainer_jobs_flag_grants_trainjobs_and_node_zeros_log_only(render) -> None:
    rules = find(render(*VALUES["prod"]), "Role", "-steps")["rules"]
    assert rules[0]["resourceNames"] == ["kubetune-s3", "mlflow-credentials"]
    assert rules[1:] == [
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
         "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},  # to find node 0's pod by its labels
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    ]
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]


def test_pytorchjob_clusters_get_the_training_operators_kind(render) -> None:
    rules = find(render("--set", "rbac.trainerJobs=true", "--set", "rbac.trainerJobKinds={pytorchjob}"),
                 "Role", "-steps")["rules"]
    kinds = [(r["apiGroups"], r["resources"]) for r in rules]
    assert (["kubeflow.org"], ["pytorchjobs"]) in kinds and (["trainer.kubeflow.org"], ["trainjobs"]) not in kinds
    assert next(r for r in rules if r["resources"] == ["pytorchjobs"])["verbs"] == [
        "create", "get", "list", "watch", "delete"]


def test_a_two_node_pool_in_values_reaches_the_pipeline_config(render) -> None:
    """The chart README's 2 × 8 GPU example: values spelling in, kubetune's keys out, accepted by its validation."""
    args = ("--set", "resources.sft.nodes=2", "--set", "resources.sft.gpus=8", "--set",
            "resources.sft.queueName=a100-queue", "--set", "resources.sft.jobTimeoutSeconds=86400",
            "--set", "resources.sft.keepJob=true", "--set", "modelCache.pvc=kubetune-cache")
    cfg = load_pipeline_config(text=pipeline_config_text(render(*VALUES["prod"], *args)))
    sft = cfg.resources_for("sft")
    assert (sft.nodes, sft.gpus, sft.queue_name, sft.job_timeout_s, sft.keep_job) == (2, 8, "a100-queue", 86400, True)
    assert (sft.trainer, sft.runtime) == ("trainjob", "torch-distributed")


def test_a_gang_scheduled_pool_in_values_reaches_the_pipeline_config(render) -> None:
    """The chart README's Volcano variant: podGroupPolicy and volcanoQueue become kubetune's snake_case keys."""
    args = ("--set", "resources.sft.nodes=2", "--set", "resources.sft.gpus=8", "--set",
            "resources.sft.podGroupPolicy=volcano", "--set", "resources.sft.volcanoQueue=research", "--set",
            "resources.sft.runtime=torch-distributed-volcano", "--set", "modelCache.pvc=kubetune-cache")
    sft = load_pipeline_config(text=pipeline_config_text(render(*VALUES["prod"], *args))).resources_for("sft")
    assert (sft.pod_group_policy, sft.volcano_queue, sft.runtime) == ("volcano", "research",
                                                                      "torch-distributed-volcano")


# --- the pipeline config and the registration Job ----------------------------------------------------------------


def test_prod_values_flow_into_the_pipeline_config(render) -> None:
    manifests = render(*VALUES["prod"])
    cfg = load_pipeline_config(text=pipeline_config_text(manifests))  # kubetune's own validation accepts it
    sft = cfg.resources_for("sft")
    assert (sft.gpus, sft.gpu_type, sft.cpu, sft.memory) == (4, "nvidia.com/gpu", "32", "256Gi")
    assert sft.node_selector == PROD["resources"]["sft"]["nodeSelector"]
    # pod-spec spelling in values (tolerationSeconds) -> kubetune's (toleration_seconds), which placement reads
    assert sft.tolerations[1] == {"key": "kubetune.io/spot", "operator": "Equal", "value": "true",
                                  "effect": "NoExecute", "toleration_seconds": 120}
    assert cfg.resources_for("evaluate").node_selector == {"kubetune.io/pool": "l4"}
    assert cfg.resources_for("export").memory == "8Gi"  # `default`
    assert cfg.image("runtime") == container(find(manifests, "Job"))["image"]
    assert cfg.image("trainer") == "ghcr.io/kubetune/kubetune-trainer:0.1.0"
    assert cfg.mlflow.tracking_uri == TRACKING_URI and cfg.mlflow.experiment == "kubi-prod"
    assert cfg.s3.credentials_secret == "kubetune-s3" and cfg.s3.endpoint_url == PROD["s3"]["endpoint"]
    assert cfg.s3.artifact_prefix == "s3://acme-ml-models/kubetune"
    assert cfg.model_cache.pvc == find(manifests, "PersistentVolumeClaim")["metadata"]["name"]
    assert cfg.stages["sft"]["learning_rate"] == 2.0e-4  # the user's keys come through untouched


def test_the_compiled_pipeline_puts_training_on_the_gpu_pool(render, tmp_path) -> None:
    """What the Job will upload: compile the prod config and read the sft step's placement back."""
    from kubetune.launch.local_run import compile_pipeline

    cfg = load_pipeline_config(text=pipeline_config_text(render(*VALUES["prod"])))
    spec, platform = yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text())
    sft = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-sft"]
    assert sft["nodeSelector"]["labels"] == PROD["resources"]["sft"]["nodeSelector"]
    assert sft["tolerations"][1] == {"key": "kubetune.io/spot", "operator": "Equal", "value": "true",
                                     "effect": "NoExecute", "tolerationSeconds": "120"}  # int64 as a string
    executor = spec["deploymentSpec"]["executors"]["exec-sft"]["container"]
    assert executor["image"] == "ghcr.io/kubetune/kubetune-trainer:0.1.0"
    assert executor["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert executor["resources"]["accelerator"]["resourceCount"] == "4"
    assert executor["resources"]["resourceMemoryLimit"] == "256Gi"


def test_the_demo_pipeline_is_the_example_without_its_cluster_sections() -> None:
    demo = yaml.safe_load((CHART / "files" / "demo-pipeline.yaml").read_text())
    example = yaml.safe_load((ROOT / "examples" / "pipeline_sft.yaml").read_text())
    assert demo == {k: v for k, v in example.items() if k not in ("resources", "mlflow", "s3", "images", "model_cache")}


def test_a_users_pipeline_replaces_the_demo_instead_of_merging_into_it(render) -> None:
    mine = {"name": "mine", "pipeline": "sft", "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
            "template": "qwen", "stages": {"sft": {"dataset": "kubi_sft"}}}
    manifests = render("--set-json", f"pipeline={json.dumps(mine)}")
    cfg = yaml.safe_load(pipeline_config_text(manifests))
    assert {k: v for k, v in cfg.items() if k in mine} == mine
    assert "default_system" not in cfg and "evaluation" not in cfg  # nothing of the demo leaks in
    assert "--pipeline-name=kubetune-sft-mine" in container(find(manifests, "Job"))["args"]


def test_the_chart_refuses_cluster_sections_inside_values_pipeline(helm) -> None:
    error = helm_error(helm, "--set", "pipeline.resources.sft.gpus=1")
    assert "pipeline.resources" in error and "values.resources" in error


def test_registration_job_is_a_post_install_and_post_upgrade_hook(render) -> None:
    manifests = render(*VALUES["prod"])
    job = find(manifests, "Job", "-register")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    main = container(job)
    assert main["command"] == ["python", "/opt/kubetune/scripts/register_pipeline.py"]
    assert main["args"] == [
        "--config=/etc/kubetune/pipeline.yaml", "--host=http://ml-pipeline.kubeflow:8888",
        "--experiment=kubetune-prod", "--pipeline-name=kubetune-sft-kubi", "--schedule-enabled=true",
        "--cron=0 30 2 * * 1", "--job-name=kubi-weekly-retrain", "--max-concurrency=1", "--no-catchup=true",
        '--params={"max_steps":2000}',
    ]
    # the config file it reads is the ConfigMap's key, mounted read-only
    mount = next(m for m in main["volumeMounts"] if m["mountPath"] == "/etc/kubetune")
    volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == find(manifests, "ConfigMap")["metadata"]["name"]
    # a new config rolls a new pod template (and the hook runs again anyway)
    changed = find(render(*VALUES["prod"], "--set", "pipeline.lora_rank=32"), "Job")
    assert changed["spec"]["template"]["metadata"]["annotations"]["checksum/pipeline-config"] != \
        job["spec"]["template"]["metadata"]["annotations"]["checksum/pipeline-config"]


def test_multi_user_kfp_gets_a_projected_token(render) -> None:
    job = find(render("--set", "kfp.multiUser=true", "--set", "kfp.namespace=team-a"), "Job")
    assert "--token-file=/var/run/secrets/kubeflow/pipelines/token" in container(job)["args"]
    assert "--namespace=team-a" in container(job)["args"]
    token = next(v for v in pod_spec(job)["volumes"] if v["name"] == "kfp-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"


def test_disabled_schedule_and_external_mlflow(render) -> None:
    manifests = render("--set", "schedule.enabled=false", "--set", "mlflow.enabled=false",
                       "--set", "mlflow.externalTrackingUri=http://mlflow.shared:5000")
    assert "--schedule-enabled=false" in container(find(manifests, "Job"))["args"]
    assert not [m for m in manifests if m["kind"] in ("Deployment", "Service", "PersistentVolumeClaim")]
    assert yaml.safe_load(pipeline_config_text(manifests))["mlflow"]["tracking_uri"] == "http://mlflow.shared:5000"
    no_register = render("--set", "kfp.register=false")
    assert not [m for m in no_register if m["kind"] == "Job"]


# --- values.schema.json -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "field"), [
    (("--set-string", "schedule.cron=0 3 * * 0"), "/schedule/cron"),  # crontab's 5 fields: KFP wants 6
    (("--set", "schedule.maxConcurrency=11"), "/schedule/maxConcurrency"),
    (("--set", "schedule.enabled=yes"), "/schedule/enabled"),
    (("--set", "resources.stf.gpus=1"), "'stf'"),
    (("--set", "resources.sft.gpus=-1"), "/resources/sft/gpus"),
    (("--set", "resources.sft.tolerations[0].operator=Maybe"), "/resources/sft/tolerations/0/operator"),
    (("--set", "resources.sft.memory=lots"), "/resources/sft/memory"),
    (("--set", "resources.sft.nodes=0"), "/resources/sft/nodes"),
    (("--set", "resources.sft.trainer=mpijob"), "/resources/sft/trainer"),
    (("--set", "resources.sft.podGroupPolicy=kueue"), "/resources/sft/podGroupPolicy"),
    (("--set", "rbac.trainerJobKinds={mpijob}"), "/rbac/trainerJobKinds/0"),
    (("--set", "mlflow.backendStore.type=mysql"), "/mlflow/backendStore/type"),
    (("--set", "mlflow.backendStore.type=postgresql"), "/mlflow/backendStore/existingSecret"),
    (("--set", "mlflow.replicas=2"), "/mlflow/replicas"),  # sqlite: one writer
    (("--set", "mlflow.enabled=false"), "/mlflow/externalTrackingUri"),
    (("--set", "mlflow.artifactsDestination=/data/artifacts"), "/mlflow/artifactsDestination"),
    (("--set", "mlflow.networkPolicy.from=everyone"), "/mlflow/networkPolicy/from"),
    (("--set", "mlflow.ingress.enabled=true", "--set", "mlflow.ingress.host=Not A Host"), "/mlflow/ingress/host"),
    (("--set", "kfp.host=ml-pipeline:8888"), "/kfp/host"),
    (("--set", "images.runtime.digest=abc123"), "/images/runtime/digest"),
    (("--set", "images.pullPolicy=Sometimes"), "/images/pullPolicy"),
    (("--set", "pipeline.pipeline=sftt"), "/pipeline/pipeline"),
    (("--set", "pipeline.name=Kubi_Assistant"), "/pipeline/name"),
    (("--set", "s3.accessKeyId=AKIA"), "/s3/secretAccessKey"),
    (("--set", "mlfow.enabled=false"), "'mlfow'"),
])
def test_schema_rejects_bad_values_naming_the_field(helm, args: tuple[str, ...], field: str) -> None:
    error = helm_error(helm, *args)
    assert "values don't meet the specifications of the schema" in error
    assert field in error, error


def test_schema_accepts_every_cron_form_kfp_accepts(render) -> None:
    for cron in ("0 0 3 * * 0", "0 */15 * * * *", "0 30 2 * * MON-FRI", "@weekly", "@every 6h"):
        job = find(render("--set-string", f"schedule.cron={cron}"), "Job")
        assert f"--cron={cron}" in container(job)["args"]


# --- NOTES.txt ----------------------------------------------------------------------------------------------------


def test_notes_say_where_mlflow_is_what_was_registered_and_how_to_run(helm) -> None:
    result = run_helm(helm, "install", "kt", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                      *VALUES["prod"])
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert TRACKING_URI in notes and "https://mlflow.ml.acme.example" in notes
    assert f"port-forward svc/{MLFLOW} 5000:5000" in notes
    assert 'pipeline "kubetune-sft-kubi" in experiment "kubetune-prod"' in notes
    assert 'recurring run "kubi-weekly-retrain", cron "0 30 2 * * 1"' in notes
    assert "port-forward svc/ml-pipeline-ui 8080:80" in notes and "Create run" in notes
    assert "logs job/kt-kubetune-register" in notes
    disabled = run_helm(helm, "install", "kt", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                        "--set", "schedule.enabled=false")
    assert "schedule:  none" in disabled.stdout.split("NOTES:", 1)[1]
