"""sft: validate → preprocess → sft → evaluate → export → register → promote."""

# no `from __future__ import annotations`: KFP reads the pipeline's parameter types at runtime

from typing import Any

from kfp import dsl

from kubetune.components import Components
from kubetune.config.pipeline import PipelineConfig
from kubetune.pipelines.dag import Dag


def build(cfg: PipelineConfig, components: Components, local: bool = False) -> Any:
    sft_keys = cfg.stage_config("sft")

    @dsl.pipeline(name=f"kubetune-sft-{cfg.name}", description="Supervised fine-tuning, evaluated and promoted.")
    def sft(config: str = cfg.to_param(), learning_rate: float = sft_keys.train.learning_rate,
            num_train_epochs: float = sft_keys.train.num_train_epochs, max_steps: int = sft_keys.train.max_steps,
            s3_secret: str = cfg.s3.credentials_secret, mlflow_secret: str = cfg.mlflow.credentials_secret) -> None:
        with Dag(cfg, components, config, s3_secret, mlflow_secret, local) as dag:
            dag.validate()
            trained = dag.train("sft", dataset=dag.preprocess("sft"), learning_rate=learning_rate,
                                num_train_epochs=num_train_epochs, max_steps=max_steps)
            dag.finish(trained.outputs["adapter"])

    return sft
