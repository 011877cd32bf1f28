"""KFP pipelines built from a validated pipeline config (installed as `kubetune.pipelines`).

The same pipeline function runs locally (`kubetune run`, through kfp.local) and compiles for a
cluster (`kubetune compile`/`submit`/`schedule`): one DAG, not two.
"""

from __future__ import annotations

from typing import Any

from kubetune.components import build as build_components
from kubetune.config.pipeline import PipelineConfig


def build_pipeline(cfg: PipelineConfig, local: bool = False) -> Any:
    """The `@dsl.pipeline` function for `cfg.pipeline`, with images and placement baked in.

    Args:
        cfg: the validated pipeline config.
        local: built for `kubetune run` (kfp.local): the same steps and edges; only placement differs
            (no model-cache PVC, so caches stay in the user's own cache folder).
    """
    from kubetune.pipelines import full, preference, rlhf, sft

    components = build_components(cfg.image("runtime"), cfg.image("trainer"))
    if cfg.pipeline == "sft":
        return sft.build(cfg, components, local)
    if cfg.pipeline in ("dpo", "kto"):
        return preference.build(cfg, components, cfg.pipeline, local)
    if cfg.pipeline == "rlhf":
        return rlhf.build(cfg, components, local)
    return full.build(cfg, components, local)
