"""The steps every pipeline shares, added with their placement, so each DAG file reads as its shape."""

from __future__ import annotations

from typing import Any

from kfp import dsl

from kubetune.components import Components
from kubetune.config.pipeline import PipelineConfig
from kubetune.pipelines.placement import place, preprocess_cache_key

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER


class Dag:
    """Adds steps to the pipeline being defined; used as a context manager around the pipeline's body.

    Inside `with Dag(...) as dag:` every step runs under a `dsl.ExitHandler` whose exit step
    (`finalize`) runs last whatever happened — succeeded, failed or cancelled — and closes the
    pipeline's MLflow runs with that outcome, so none is left RUNNING.

    Args:
        cfg: the validated pipeline config (resources, retries, caching are compiled in from it).
        components: the built components (images baked in).
        config: the `config` pipeline parameter (YAML text every step parses).
        s3_secret, mlflow_secret: secret-name pipeline parameters.
        local: placement for `kubetune run` (kfp.local) rather than a cluster; see `placement.place`.
    """

    def __init__(self, cfg: PipelineConfig, components: Components, config: Any, s3_secret: Any,
                 mlflow_secret: Any, local: bool = False) -> None:
        self.cfg, self.c, self.config, self.local = cfg, components, config, local
        self.secrets = {"s3_secret": s3_secret, "mlflow_secret": mlflow_secret}
        self.mlflow_run_id: Any = None
        self.last: Any = None
        self._exit_handler: Any = None

    def __enter__(self) -> Dag:
        final = self._place(self.c.finalize(config=self.config, run_id=RUN_ID), "finalize")
        final.set_caching_options(enable_caching=False)
        self._exit_handler = dsl.ExitHandler(final, name="kubetune")
        self._exit_handler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit_handler.__exit__(*exc)

    def _place(self, task: Any, step: str, training: bool = False) -> Any:
        return place(task, step, self.cfg, training=training, local=self.local, **self.secrets)

    def validate(self) -> Any:
        task = self._place(self.c.validate(config=self.config, run_id=RUN_ID), "validate")
        task.set_caching_options(enable_caching=False)  # it opens this run's MLflow parent run
        self.mlflow_run_id, self.last = task.outputs["Output"], task
        return task

    def preprocess(self, stage: str) -> Any:
        task = self._place(self.c.preprocess(config=self.config, stage=stage), "preprocess").after(self.last)
        task.set_display_name(f"preprocess-{stage}")
        task.set_caching_options(enable_caching=self.cfg.caching.preprocess,
                                 cache_key=preprocess_cache_key(self.cfg, stage))
        return task.outputs["dataset"]

    def train(self, stage: str, **inputs: Any) -> Any:
        step = getattr(self.c, stage)
        task = step(config=self.config, run_id=RUN_ID, mlflow_run_id=self.mlflow_run_id, **inputs)
        return self._place(task, stage, training=True)

    def finish(self, adapter: Any, reward_model: Any = None) -> Any:
        """evaluate → export → register → promote: the tail every pipeline shares.

        Args:
            adapter: the trained adapter (the candidate).
            reward_model: a reward model this run trained (rlhf; dpo/kto with a `stages.rm` section): it also
                scores both sides' answers.
        """
        common = {"config": self.config, "run_id": RUN_ID, "mlflow_run_id": self.mlflow_run_id}
        if reward_model is not None:
            evaluation = self._place(self.c.evaluate_with_reward(adapter=adapter, reward_model=reward_model, **common),
                                     "evaluate")
            evaluation.set_display_name("evaluate")
        else:
            evaluation = self._place(self.c.evaluate(adapter=adapter, **common), "evaluate")
        evaluation.set_caching_options(enable_caching=False)
        exported = self._place(self.c.export(config=self.config, adapter=adapter), "export")
        registered = self._place(self.c.register(merged=exported.outputs["merged"],
                                                 metrics=evaluation.outputs["metrics"],
                                                 s3_uri=exported.outputs["Output"], **common), "register")
        promoted = self._place(self.c.promote(config=self.config, version=registered.output,
                                              metrics=evaluation.outputs["metrics"]), "promote")
        for task in (exported, registered, promoted):
            task.set_caching_options(enable_caching=False)
        return promoted
