"""promote: move the `champion` alias only when the candidate beats it; else mark it `challenger`."""

from kfp.dsl import Input, Markdown, Metrics, Output


def promote(config: str, version: str, metrics: Input[Metrics], decision: Output[Markdown]) -> bool:
    """Returns True when the version became champion."""
    from kubetune.components import runtime

    result = runtime.promote(config, version, dict(metrics.metadata))
    with open(decision.path, "w") as f:
        f.write(f"**{result['alias']}** — version {version}: {result['reason']}\n")
    return bool(result["promoted"])
