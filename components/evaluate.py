"""evaluate: loss, perplexity and generation metrics of base + adapter; a Markdown report for the KFP UI."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(config: str, adapter: Input[Model], metrics: Output[Metrics], report: Output[Markdown],
             predictions: Output[Dataset], run_id: str = "", mlflow_run_id: str = "") -> float:
    """Returns the gate metric named in the config's `promotion.metric`."""
    from kubetune.components import runtime

    result = runtime.evaluate(config, adapter.path, report.path, predictions.path, run_id=run_id,
                              parent_run_id=mlflow_run_id)
    for name, value in result.items():
        metrics.log_metric(name, value)
    return runtime.gate_metric(config, result)


def evaluate_base(config: str, metrics: Output[Metrics], report: Output[Markdown], predictions: Output[Dataset],
                  run_id: str = "", mlflow_run_id: str = "") -> None:
    """The base model (no adapter from this run) on the same evaluation rows: the "before" of the run."""
    from kubetune.components import runtime

    result = runtime.evaluate(config, None, report.path, predictions.path, run_id=run_id,
                              parent_run_id=mlflow_run_id, step_name="evaluate-base")
    for name, value in result.items():
        metrics.log_metric(name, value)
