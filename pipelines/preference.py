"""dpo and kto: validate → [sft →] dpo|kto → evaluate → export → register → promote, [rm] beside them.

SFT runs first when the config has a `stages.sft` section; otherwise the preference stage starts
from `adapter_name_or_path` (or a fresh adapter). A `stages.rm` section trains a reward model beside
them, on its own data; the evaluate step then scores the candidate's and the baseline's answers with
it (the reward gap, and `promotion.min_reward_delta`).
"""

# no `from __future__ import annotations`: KFP reads the pipeline's parameter types at runtime

from typing import Any

from kfp import dsl

from kubetune.components import Components
from kubetune.config.pipeline import PipelineConfig
from kubetune.pipelines.dag import Dag


def build(cfg: PipelineConfig, components: Components, stage: str, local: bool = False) -> Any:
    with_sft, with_rm = "sft" in cfg.stages, "rm" in cfg.stages

    @dsl.pipeline(name=f"kubetune-{stage}-{cfg.name}", description=f"{stage.upper()} preference optimisation.")
    def preference(config: str = cfg.to_param(), s3_secret: str = cfg.s3.credentials_secret,
                   mlflow_secret: str = cfg.mlflow.credentials_secret) -> None:
        with Dag(cfg, components, config, s3_secret, mlflow_secret, local) as dag:
            dag.validate()
            inputs: dict[str, Any] = {}
            if with_sft:
                inputs["sft_adapter"] = dag.train("sft", dataset=dag.preprocess("sft")).outputs["adapter"]
            # the reward model shares no inputs with sft or the preference stage: it trains beside them
            reward = dag.train("rm", dataset=dag.preprocess("rm")).outputs["reward_model"] if with_rm else None
            aligned = dag.train(stage, dataset=dag.preprocess(stage), **inputs)
            dag.finish(aligned.outputs["adapter"], reward_model=reward)

    return preference
