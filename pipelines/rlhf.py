"""rlhf: validate → sft, rm → ppo → evaluate → export → register → promote."""

# no `from __future__ import annotations`: KFP reads the pipeline's parameter types at runtime

from typing import Any

from kfp import dsl

from kubetune.components import Components
from kubetune.config.pipeline import PipelineConfig
from kubetune.pipelines.dag import Dag


def build(cfg: PipelineConfig, components: Components, local: bool = False) -> Any:
    @dsl.pipeline(name=f"kubetune-rlhf-{cfg.name}", description="SFT, reward model, then PPO against it.")
    def rlhf(config: str = cfg.to_param(), s3_secret: str = cfg.s3.credentials_secret,
             mlflow_secret: str = cfg.mlflow.credentials_secret) -> None:
        with Dag(cfg, components, config, s3_secret, mlflow_secret, local) as dag:
            dag.validate()
            policy = dag.train("sft", dataset=dag.preprocess("sft"))
            reward = dag.train("rm", dataset=dag.preprocess("rm"))  # runs beside sft: they share no inputs
            aligned = dag.train("ppo", dataset=dag.preprocess("ppo"), sft_adapter=policy.outputs["adapter"],
                                reward_model=reward.outputs["reward_model"])
            dag.finish(aligned.outputs["adapter"], reward_model=reward.outputs["reward_model"])

    return rlhf
