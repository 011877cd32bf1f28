"""preprocess: tokenise a stage's data into a Dataset artifact named by its content hash."""

from kfp.dsl import Dataset, Output


def preprocess(config: str, stage: str, dataset: Output[Dataset]) -> str:
    """Load, convert, template, tokenise, mask and pack; returns the content hash (the cache key)."""
    from kubetune.components import runtime

    meta = runtime.preprocess(config, stage, dataset.path)
    dataset.metadata.update(meta)
    return meta["content_hash"]
