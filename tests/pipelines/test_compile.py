"""Compiled pipeline YAML: every pipeline compiles, loads back through kfp's own loader, and carries the
cluster settings from the config (GPUs, node selectors, tolerations, secrets, retries, caching, PVC).

kfp.local ignores all cluster settings, so they are asserted here, on the compiled YAML.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kfp import components as kfp_components

from kubetune.config.pipeline import load_pipeline_config
from kubetune.launch.local_run import compile_pipeline

REPO = Path(__file__).resolve().parents[2]


def _config(pipeline: str, **extra):
    text = (REPO / "examples/pipeline_sft.yaml").read_text()
    data = yaml.safe_load(text)
    data.update({"pipeline": pipeline, "dataset_dir": str(REPO / "data"), **extra})
    if pipeline in ("rlhf", "full"):
        data["stages"].update(rm={"dataset": "kubi_pref"}, ppo={"dataset": "kubi_sft", "do_sample": True})
    if pipeline in ("dpo", "full"):
        data["stages"]["dpo"] = {"dataset": "kubi_pref"}
    if pipeline in ("kto", "full"):
        data["stages"]["kto"] = {"dataset": "kubi_kto"}
    return load_pipeline_config(text=yaml.safe_dump(data))


def _docs(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def _steps(spec: dict) -> dict:
    """The tasks of the pipeline's body: they sit in the exit handler's sub-DAG (finalize runs after it)."""
    body = spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    return spec["components"][body]["dag"]["tasks"]


def test_sft_pipeline_compiles_and_loads_back(tmp_path: Path) -> None:
    path = compile_pipeline(_config("sft"), tmp_path / "sft.yaml")
    spec, platform = _docs(path)
    assert spec["pipelineInfo"]["name"] == "kubetune-sft-kubi"
    assert set(spec["root"]["dag"]["tasks"]) == {"exit-handler-1", "finalize"}
    tasks = _steps(spec)
    assert {"validate", "preprocess", "sft", "evaluate", "export", "register", "promote"} <= set(tasks)
    assert "evaluate-base" not in tasks  # the baseline is scored inside evaluate, on the same rows
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["learning_rate"]["defaultValue"] == pytest.approx(2e-4)
    assert {"config", "s3_secret", "mlflow_secret", "max_steps"} <= set(params)
    loaded = kfp_components.load_component_from_file(str(path))  # kfp's own loader round-trip
    assert loaded.name == "kubetune-sft-kubi"


def test_cluster_settings_are_compiled_in(tmp_path: Path) -> None:
    spec, platform = _docs(compile_pipeline(_config("sft"), tmp_path / "sft.yaml"))
    executors = spec["deploymentSpec"]["executors"]
    sft_exec = next(v for k, v in executors.items() if k.endswith("-sft"))
    resources = sft_exec["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert str(resources["accelerator"]["resourceCount"]) == "1"
    assert resources["resourceMemoryLimit"] == "32Gi" and resources["resourceCpuLimit"] == "8"
    assert sft_exec["container"]["image"].startswith("ghcr.io/kubetune/kubetune-trainer:")
    validate_exec = next(v for k, v in executors.items() if k.endswith("-validate"))
    assert validate_exec["container"]["image"].startswith("ghcr.io/kubetune/kubetune-runtime:")

    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    sft_k8s = next(v for k, v in k8s.items() if k.endswith("-sft"))
    assert sft_k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert sft_k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert sft_k8s["pvcMount"][0]["mountPath"] == "/cache/kubetune"
    # the body is the exit handler's sub-DAG: pipeline parameters reach it as `pipelinechannel--<name>` inputs
    secrets = {s["secretNameParameter"]["componentInputParameter"].removeprefix("pipelinechannel--"): s
               for s in sft_k8s["secretAsEnv"] if "componentInputParameter" in s["secretNameParameter"]}
    assert set(secrets) == {"s3_secret", "mlflow_secret"}
    assert {e["envVar"] for e in secrets["s3_secret"]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # env_secrets (default: the hub token from hf-credentials), each optional, compiled in by name
    named = {s["secretNameParameter"]["runtimeValue"]["constant"]: s for s in sft_k8s["secretAsEnv"]
             if "runtimeValue" in s["secretNameParameter"]}
    assert named["hf-credentials"]["keyToEnv"] == [{"secretKey": "HF_TOKEN", "envVar": "HF_TOKEN"}]
    assert named["hf-credentials"]["optional"] is True

    tasks = _steps(spec)
    assert tasks["sft"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["sft"]["cachingOptions"].get("enableCache", False) is False
    assert tasks["preprocess"]["cachingOptions"]["enableCache"] is True
    assert len(tasks["preprocess"]["cachingOptions"]["cacheKey"]) == 64  # the data pipeline's sha256 key


def test_preprocess_cache_key_follows_the_data(tmp_path: Path) -> None:
    from kubetune.pipelines.placement import preprocess_cache_key

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text('{"d": {"file_name": "d.json"}}')
    (data_dir / "d.json").write_text('[{"instruction": "a", "output": "b"}]')
    cfg = _config("sft", dataset_dir=str(data_dir))
    cfg.stages["sft"]["dataset"] = "d"
    before = preprocess_cache_key(cfg, "sft")
    assert preprocess_cache_key(cfg, "sft") == before
    (data_dir / "d.json").write_text('[{"instruction": "a", "output": "c"}]')
    assert preprocess_cache_key(cfg, "sft") != before


@pytest.mark.parametrize("pipeline", ["dpo", "kto", "rlhf", "full"])
def test_every_pipeline_compiles(pipeline: str, tmp_path: Path) -> None:
    spec, _ = _docs(compile_pipeline(_config(pipeline), tmp_path / f"{pipeline}.yaml"))
    assert spec["pipelineInfo"]["name"] == f"kubetune-{pipeline}-kubi"
    if pipeline == "full":
        assert spec["root"]["inputDefinitions"]["parameters"]["alignment"]["defaultValue"] == "none"


def _gpu_count(path: Path, step: str) -> int | None:
    spec, _ = _docs(path)
    executor = next(v for k, v in spec["deploymentSpec"]["executors"].items() if k.endswith(f"-{step}"))
    accelerator = executor["container"].get("resources", {}).get("accelerator")
    return int(accelerator["resourceCount"]) if accelerator else None


def test_gpus_auto_asks_for_what_the_estimate_says_fits(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    from kubetune.config import ConfigError

    model = tmp_path / "llama-7b-shape"  # a config alone: the estimate needs no weights
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000).save_pretrained(model)

    def compiled(finetuning_type: str, gib: float, **keys: object) -> Path:
        resources = {"sft": {"gpus": "auto", "gpu_memory_gib": gib}, "evaluate": {"gpus": "auto"}}
        cfg = _config("sft", model_name_or_path=str(model), finetuning_type=finetuning_type, resources=resources,
                      **keys)
        return compile_pipeline(cfg, tmp_path / f"{finetuning_type}-{gib}-{len(keys)}.yaml")

    lora = compiled("lora", 24, pure_bf16=True)
    assert _gpu_count(lora, "sft") == 1  # 7B LoRA on 16-bit weights ≈ 16 GB
    assert _gpu_count(lora, "evaluate") == 1
    assert _gpu_count(compiled("lora", 24), "sft") == 1  # default bf16 (auto on GPUs): a 16-bit LoRA base
    zero3 = str(REPO / "examples" / "deepspeed" / "ds_z3_config.json")
    # float32 base weights alone are 25 GiB: more than one GPU helps only where the model is sharded
    with pytest.raises(ConfigError, match=r"resources.sft.gpus = 'auto'.*does not fit one GPU of 24 GiB.*"
                                          r"every GPU holds the whole model.*ds_z3_config.json.*on 2 GPUs"):
        compiled("lora", 24, bf16=False)
    assert _gpu_count(compiled("lora", 24, bf16=False, deepspeed=zero3), "sft") == 2
    assert _gpu_count(compiled("full", 80, deepspeed=zero3), "sft") in (2, 4)  # full AMP ≈ 120 GB: ZeRO-3
    with pytest.raises(ConfigError, match=r"resources.sft.gpus = 'auto'.*does not fit on 8 GPUs of 1 GiB"):
        compiled("full", 1, deepspeed=zero3)


def test_finalize_runs_after_every_step_whatever_their_outcome(tmp_path: Path) -> None:
    spec, _ = _docs(compile_pipeline(_config("sft"), tmp_path / "sft.yaml"))
    final = spec["root"]["dag"]["tasks"]["finalize"]
    assert final["dependentTasks"] == ["exit-handler-1"]
    assert final["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert final["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    assert final["cachingOptions"].get("enableCache", False) is False


def _env(spec: dict, step: str) -> dict[str, str]:
    executor = next(v for k, v in spec["deploymentSpec"]["executors"].items() if k.endswith(f"-{step}"))
    return {e["name"]: e["value"] for e in executor["container"].get("env", [])}


def test_model_cache_pvc_is_a_cluster_setting_only(tmp_path: Path) -> None:
    """`kubetune run` builds the same DAG without the PVC (its mount path must not become KUBETUNE_CACHE here)
    and without retries (a local failure is not a pre-emption)."""
    from kfp import compiler

    from kubetune.pipelines import build_pipeline

    cfg = _config("sft")
    cluster, cluster_k8s = _docs(compile_pipeline(cfg, tmp_path / "cluster.yaml"))
    compiler.Compiler().compile(build_pipeline(cfg, local=True), package_path=str(tmp_path / "local.yaml"))
    local, local_k8s = _docs(tmp_path / "local.yaml")
    assert _env(cluster, "sft")["KUBETUNE_CACHE"] == "/cache/kubetune"
    assert "KUBETUNE_CACHE" not in _env(local, "sft")
    assert "pvcMount" not in str(local_k8s) and "pvcMount" in str(cluster_k8s)
    assert _steps(cluster)["sft"]["retryPolicy"]["maxRetryCount"] == 3 and "retryPolicy" not in _steps(local)["sft"]
    assert set(_steps(local)) == set(_steps(cluster))  # one DAG: the same steps and edges
    assert {k: v.get("dependentTasks") for k, v in _steps(local).items()} == \
        {k: v.get("dependentTasks") for k, v in _steps(cluster).items()}


def test_a_step_on_several_nodes_is_a_cpu_launcher_that_forwards_its_resources(tmp_path: Path) -> None:
    """`nodes: 2`: the sft step's own pod asks for no GPU and no GPU pool; what each node gets travels in the
    config parameter the step reads (and puts on the TrainJob), and the pod's labels say what it launches."""
    resources = {"sft": {"nodes": 2, "gpus": 8, "cpu": "32", "memory": "256Gi", "queue_name": "gpu-a100",
                         "node_selector": {"kubetune.io/pool": "a100"},
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}
    spec, platform = _docs(compile_pipeline(_config("sft", resources=resources), tmp_path / "sft.yaml"))
    sft_exec = next(v for k, v in spec["deploymentSpec"]["executors"].items() if k.endswith("-sft"))
    pod = sft_exec["container"]["resources"]
    assert "accelerator" not in pod
    assert (pod["resourceCpuRequest"], pod["resourceMemoryLimit"]) == ("1", "2Gi")
    assert sft_exec["container"]["image"].startswith("ghcr.io/kubetune/kubetune-trainer:")  # the launcher's code
    env = {e["name"]: e.get("value") for e in sft_exec["container"].get("env", [])}
    assert env.get("KUBETUNE_LAUNCHES_NODE_JOB") == "1"  # only this compiled step launches a job (not kfp.local)
    sft_k8s = next(v for k, v in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items()
                   if k.endswith("-sft"))
    assert "nodeSelector" not in sft_k8s and "tolerations" not in sft_k8s
    assert sft_k8s["podMetadata"]["labels"] == {"kubetune.io/launches": "trainjob", "kubetune.io/nodes": "2"}
    assert sft_k8s["pvcMount"][0]["mountPath"] == "/cache/kubetune"  # the work directory, shared with the nodes
    forwarded = yaml.safe_load(spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"])
    node = forwarded["resources"]["sft"]
    assert (node["nodes"], node["gpus"], node["cpu"], node["memory"]) == (2, 8, "32", "256Gi")
    assert (node["trainer"], node["runtime"], node["queue_name"]) == ("trainjob", "torch-distributed", "gpu-a100")
    assert node["node_selector"] == {"kubetune.io/pool": "a100"} and len(node["tolerations"]) == 1
    assert _steps(spec)["sft"]["retryPolicy"]["maxRetryCount"] == 3  # a retried launcher finds its job again


def test_an_rm_section_in_a_dpo_pipeline_trains_a_reward_model_that_scores_the_evaluation(tmp_path: Path) -> None:
    plain = _steps(_docs(compile_pipeline(_config("dpo"), tmp_path / "dpo.yaml"))[0])
    assert "rm" not in plain and "reward_model" not in plain["evaluate"]["inputs"].get("artifacts", {})
    cfg = _config("dpo")
    cfg.stages["rm"] = {"dataset": "kubi_pref", "max_steps": 2}
    assert cfg.stages_to_run() == ("sft", "rm", "dpo")
    tasks = _steps(_docs(compile_pipeline(cfg, tmp_path / "dpo-rm.yaml"))[0])
    reward = tasks["evaluate-with-reward"]["inputs"]["artifacts"]["reward_model"]["taskOutputArtifact"]
    assert reward == {"producerTask": "rm", "outputArtifactKey": "reward_model"}
    assert "rm" not in tasks["dpo"].get("dependentTasks", [])  # it trains beside sft and dpo
