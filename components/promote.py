"""promote: move the `champion` alias only when the candidate beats it; else mark it `challenger`. The decision,
every gate with its numbers, also as an HTML report (the KFP UI renders it; the version's MLflow run keeps it)."""

from kfp.dsl import HTML, Input, Markdown, Metrics, Output


def promote(config: str, version: str, metrics: Input[Metrics], decision: Output[Markdown],
            decision_report: Output[HTML]) -> bool:
    """Returns True when the version became champion. (`decision_report`, not `html`: the evaluate step's report
    is the run's artifact named `html`.)"""
    from kubetune.components import runtime
    from kubetune.evaluate.decision_report import publish_decision
    from kubetune.tracking.pipeline_tracking import tracking_uri

    measured = dict(metrics.metadata)
    result = runtime.promote(config, version, measured)
    with open(decision.path, "w") as f:
        f.write(f"**{result['alias']}** — version {version}: {result['reason']}\n")
    cfg = runtime.parse(config)
    publish_decision(cfg, result, measured, decision_report.path, tracking_uri(cfg))
    return bool(result["promoted"])
