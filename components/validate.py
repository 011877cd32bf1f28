"""validate: check the whole pipeline config before any other step runs; open the MLflow parent run."""

from kfp.dsl import Markdown, Output


def validate(config: str, run_id: str, report: Output[Markdown]) -> str:
    """Fails in seconds, listing every problem, if any stage of the pipeline cannot run.

    Returns the parent MLflow run id that later steps nest their runs under.
    """
    from kubetune.components import runtime

    parent = runtime.validate(config, run_id=run_id)
    with open(report.path, "w") as f:
        f.write(f"Config valid. MLflow parent run: `{parent or 'tracking off'}`\n")
    return parent
