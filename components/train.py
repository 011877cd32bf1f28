"""sft, rm, dpo, kto, ppo, pt: one training component per stage, all thin calls into the library."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def sft(config: str, dataset: Input[Dataset], adapter: Output[Model], metrics: Output[Metrics], run_id: str = "",
        mlflow_run_id: str = "", learning_rate: float = 0.0, num_train_epochs: float = 0.0, max_steps: int = 0) -> None:
    """Supervised fine-tuning; see kubetune.stages.sft."""
    from kubetune.components import runtime

    result = runtime.train(config, "sft", dataset.path, adapter.path, run_id=run_id, parent_run_id=mlflow_run_id,
                           overrides={"learning_rate": learning_rate, "num_train_epochs": num_train_epochs,
                                      "max_steps": max_steps})
    runtime.publish(result, metrics, adapter, stage="sft", data_hash=dataset.metadata.get("content_hash", ""))


def pt(config: str, dataset: Input[Dataset], adapter: Output[Model], metrics: Output[Metrics], run_id: str = "",
       mlflow_run_id: str = "") -> None:
    """Continued pre-training on plain text; see kubetune.stages.sft (stage pt)."""
    from kubetune.components import runtime

    result = runtime.train(config, "pt", dataset.path, adapter.path, run_id=run_id, parent_run_id=mlflow_run_id)
    runtime.publish(result, metrics, adapter, stage="pt", data_hash=dataset.metadata.get("content_hash", ""))


def rm(config: str, dataset: Input[Dataset], reward_model: Output[Model], metrics: Output[Metrics],
       run_id: str = "", mlflow_run_id: str = "") -> None:
    """Reward model on ranked pairs; see kubetune.stages.rm."""
    from kubetune.components import runtime

    result = runtime.train(config, "rm", dataset.path, reward_model.path, run_id=run_id, parent_run_id=mlflow_run_id)
    runtime.publish(result, metrics, reward_model, stage="rm", data_hash=dataset.metadata.get("content_hash", ""))


def dpo(config: str, dataset: Input[Dataset], sft_adapter: Input[Model], adapter: Output[Model],
        metrics: Output[Metrics], run_id: str = "", mlflow_run_id: str = "") -> None:
    """DPO and its loss family, continuing the SFT adapter; see kubetune.stages.dpo."""
    from kubetune.components import runtime

    result = runtime.train(config, "dpo", dataset.path, adapter.path, run_id=run_id, parent_run_id=mlflow_run_id,
                           base_adapter=sft_adapter.path)
    runtime.publish(result, metrics, adapter, stage="dpo", data_hash=dataset.metadata.get("content_hash", ""))


def kto(config: str, dataset: Input[Dataset], sft_adapter: Input[Model], adapter: Output[Model],
        metrics: Output[Metrics], run_id: str = "", mlflow_run_id: str = "") -> None:
    """KTO on unpaired desirable/undesirable answers; see kubetune.stages.kto."""
    from kubetune.components import runtime

    result = runtime.train(config, "kto", dataset.path, adapter.path, run_id=run_id, parent_run_id=mlflow_run_id,
                           base_adapter=sft_adapter.path)
    runtime.publish(result, metrics, adapter, stage="kto", data_hash=dataset.metadata.get("content_hash", ""))


def ppo(config: str, dataset: Input[Dataset], sft_adapter: Input[Model], reward_model: Input[Model],
        adapter: Output[Model], metrics: Output[Metrics], run_id: str = "", mlflow_run_id: str = "") -> None:
    """PPO against the reward model, starting from the SFT adapter; see kubetune.stages.ppo."""
    from kubetune.components import runtime

    result = runtime.train(config, "ppo", dataset.path, adapter.path, run_id=run_id, parent_run_id=mlflow_run_id,
                           base_adapter=sft_adapter.path, reward_model=reward_model.path)
    runtime.publish(result, metrics, adapter, stage="ppo", data_hash=dataset.metadata.get("content_hash", ""))
