"""evaluate: the candidate (base + this run's adapter) and its baseline (the champion, else the base) on the same
rows in one step; metrics with `baseline/` and `delta/` entries, a Markdown and an HTML report for the KFP UI."""

from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(config: str, adapter: Input[Model], metrics: Output[Metrics], report: Output[Markdown],
             html: Output[HTML], predictions: Output[Dataset], run_id: str = "", mlflow_run_id: str = "") -> float:
    """Returns the gate metric named in the config's `promotion.metric` (the candidate's)."""
    from kubetune.components import runtime

    result = runtime.evaluate(config, adapter.path, report.path, predictions.path, run_id=run_id,
                              parent_run_id=mlflow_run_id, html_path=html.path)
    for name, value in result.items():
        metrics.log_metric(name, value)
    return runtime.gate_metric(config, result)


def evaluate_with_reward(config: str, adapter: Input[Model], reward_model: Input[Model], metrics: Output[Metrics],
                         report: Output[Markdown], html: Output[HTML], predictions: Output[Dataset], run_id: str = "",
                         mlflow_run_id: str = "") -> float:
    """`evaluate`, and both sides' answers scored by the reward model this run trained (rlhf)."""
    from kubetune.components import runtime

    result = runtime.evaluate(config, adapter.path, report.path, predictions.path, run_id=run_id,
                              parent_run_id=mlflow_run_id, html_path=html.path, reward_model_path=reward_model.path)
    for name, value in result.items():
        metrics.log_metric(name, value)
    return runtime.gate_metric(config, result)
