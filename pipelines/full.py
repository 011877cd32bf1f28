"""full: sft, then the alignment the `alignment` parameter picks (ppo | dpo | kto | none), then the shared tail.

Each branch ends in its own evaluate → export → register → promote, so the DAG needs no
output-merging construct and every branch runs under kfp.local too.
"""

# no `from __future__ import annotations`: KFP reads the pipeline's parameter types at runtime

from typing import Any

from kfp import dsl

from kubetune.components import Components
from kubetune.config.pipeline import PipelineConfig
from kubetune.pipelines.dag import Dag


def build(cfg: PipelineConfig, components: Components, local: bool = False) -> Any:
    @dsl.pipeline(name=f"kubetune-full-{cfg.name}", description="SFT, then PPO, DPO, KTO or nothing; then promote.")
    def full(config: str = cfg.to_param(), alignment: str = cfg.alignment, s3_secret: str = cfg.s3.credentials_secret,
             mlflow_secret: str = cfg.mlflow.credentials_secret) -> None:
        with Dag(cfg, components, config, s3_secret, mlflow_secret, local) as dag:
            dag.validate()
            policy = dag.train("sft", dataset=dag.preprocess("sft")).outputs["adapter"]
            with dsl.If(alignment == "ppo", name="ppo"):
                reward = dag.train("rm", dataset=dag.preprocess("rm"))
                ppo = dag.train("ppo", dataset=dag.preprocess("ppo"), sft_adapter=policy,
                                reward_model=reward.outputs["reward_model"])
                dag.finish(ppo.outputs["adapter"], reward_model=reward.outputs["reward_model"])
            with dsl.Elif(alignment == "dpo", name="dpo"):
                dag.finish(dag.train("dpo", dataset=dag.preprocess("dpo"), sft_adapter=policy).outputs["adapter"])
            with dsl.Elif(alignment == "kto", name="kto"):
                dag.finish(dag.train("kto", dataset=dag.preprocess("kto"), sft_adapter=policy).outputs["adapter"])
            with dsl.Else(name="sft-only"):
                dag.finish(policy)

    return full
