"""register: a new model version in the MLflow registry, with lineage tags."""

from kfp.dsl import Input, Metrics, Model


def register(config: str, merged: Input[Model], metrics: Input[Metrics], s3_uri: str = "", run_id: str = "",
             mlflow_run_id: str = "") -> str:
    """Returns the new model version."""
    from kubetune.components import runtime

    return runtime.register(config, merged.path, dict(metrics.metadata), run_id=run_id,
                            parent_run_id=mlflow_run_id, data_hash=merged.metadata.get("data_hash", ""),
                            model_uri=s3_uri)
