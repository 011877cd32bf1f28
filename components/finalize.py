"""finalize: the pipeline's exit step — close its MLflow runs with the pipeline's outcome."""

from kfp import dsl


def finalize(config: str, run_id: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Runs last whatever happened (a `dsl.ExitHandler`); returns the state it recorded.

    The parent run becomes FINISHED when every step succeeded, else FAILED (KILLED when cancelled);
    a step's run still open (its pod was killed) is closed the same way.
    """
    from kubetune.components import runtime

    return runtime.finalize(config, run_id=run_id, pipeline_state=status.state)
