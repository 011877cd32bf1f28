"""The judge endpoint's key from a Kubernetes Secret (values.judge), rendered with the real helm binary.

`evaluation.judge_model` may be an OpenAI-compatible endpoint; the evaluate step reads its key from the variable
`evaluation.judge_api_key_env` names. The chart names (or writes) the Secret, adds it to the pipeline config's
`env_secrets` beside what was there, lets the steps' Role read it, and the compiled pipeline's evaluate step gets
it as that variable.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from deploy_conftest import KUBERNETES_VERSION, find, pipeline_config_text
from test_chart import kubernetes_validate

from kubetune.config.pipeline import PipelineConfig, load_pipeline_config

JUDGED = {"name": "judged", "pipeline": "sft", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
          "template": "chatml", "dataset_dir": "data", "stages": {"sft": {"dataset": "kubi_sft"}},
          "evaluation": {"eval_dataset": "kubi_sft_eval", "judge_model": "https://judge.example.com/v1"},
          "promotion": {"metric": "eval_loss", "min_judge_win_rate": 0.5}}


def _pipeline(**changes: Any) -> tuple[str, str]:
    """`--set-json pipeline=...`: JUDGED with its evaluation section / top-level keys changed."""
    data = json.loads(json.dumps(JUDGED))
    data["evaluation"].update(changes.pop("evaluation", {}))
    data.update(changes)
    return "--set-json", f"pipeline={json.dumps(data)}"


def _secrets(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Secret"}


def _evaluate_secret_env(cfg: PipelineConfig, tmp_path) -> dict[str, list[dict[str, str]]]:  # noqa: ANN001
    """The compiled pipeline's evaluate step: secret name → its keyToEnv, for secrets named in the config."""
    from kubetune.launch.local_run import compile_pipeline

    _, platform = yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {s["secretNameParameter"]["runtimeValue"]["constant"]: s["keyToEnv"]
            for s in executors["exec-evaluate"]["secretAsEnv"] if "runtimeValue" in s["secretNameParameter"]}


def test_an_existing_secret_reaches_the_evaluate_step_as_the_configured_variable(render, tmp_path) -> None:
    manifests = render(*_pipeline(env_secrets={"hub-token": {"token": "HF_TOKEN"}}),
                       "--set", "judge.existingSecret=judge-credentials", "--set", "judge.existingSecretKey=token")
    assert "judge-credentials" not in _secrets(manifests)  # named, never written: no key passes through Helm
    cfg = load_pipeline_config(text=pipeline_config_text(manifests))  # kubetune's own validation accepts it
    # the user's env_secrets are kept, the judge's key added as evaluation.judge_api_key_env's variable
    assert cfg.env_secrets == {"hub-token": {"token": "HF_TOKEN"}, "judge-credentials": {"token": "JUDGE_API_KEY"}}
    assert _evaluate_secret_env(cfg, tmp_path)["judge-credentials"] == [
        {"secretKey": "token", "envVar": "JUDGE_API_KEY"}]
    role = find(manifests, "Role", "-steps")
    assert role["rules"][0]["resourceNames"] == ["kt-kubetune-s3", "mlflow-credentials", "judge-credentials"]


def test_a_key_in_values_is_written_into_a_secret_and_the_default_hub_token_stays(render) -> None:
    manifests = render(*_pipeline(evaluation={"judge_api_key_env": "OPENAI_API_KEY"}),
                       "--set", "judge.apiKey=sk-test-123")
    written = _secrets(manifests)["kt-kubetune-judge"]
    assert written["stringData"] == {"api-key": "sk-test-123"}
    kubernetes_validate().validate(written, KUBERNETES_VERSION, strict=True)
    cfg = load_pipeline_config(text=pipeline_config_text(manifests))
    default = PipelineConfig.model_fields["env_secrets"].default_factory()  # the config's own default, not a copy
    assert cfg.env_secrets == {**default, "kt-kubetune-judge": {"api-key": "OPENAI_API_KEY"}}
    assert "kt-kubetune-judge" in find(manifests, "Role", "-steps")["rules"][0]["resourceNames"]


def test_without_a_judge_secret_the_config_and_the_secrets_are_untouched(render) -> None:
    manifests = render(*_pipeline())
    assert "env_secrets" not in yaml.safe_load(pipeline_config_text(manifests))  # the config's default applies
    assert not [name for name in _secrets(manifests) if "judge" in name]
    assert find(manifests, "Role", "-steps")["rules"][0]["resourceNames"] == ["kt-kubetune-s3", "mlflow-credentials"]
