"""export: merge the adapter into its base and write safetensors shards (a Model artifact, and S3 when set)."""

from kfp.dsl import Input, Model, Output


def export(config: str, adapter: Input[Model], merged: Output[Model]) -> str:
    """Returns the S3 URI of the exported model ("" when no s3.artifact_prefix is configured)."""
    from kubetune.components import runtime

    meta = runtime.export(config, adapter.path, merged.path)
    merged.metadata.update({**adapter.metadata, **meta, "merged": True})
    return meta["s3_uri"]
