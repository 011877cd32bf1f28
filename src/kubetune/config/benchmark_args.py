"""The benchmark keys of `kubetune eval` (LLaMA-Factory's EvaluationArguments, and lm-eval's), one group."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetune.config.group import ArgumentGroup


class BenchmarkArguments(ArgumentGroup):
    """LLaMA-Factory's `llamafactory-cli eval` keys (EvaluationArguments): a multiple-choice benchmark (MMLU's
    layout) scored by the next-token logits over the choice letters (`kubetune.evaluate.benchmark`); and
    lm-evaluation-harness tasks (`lm_eval_*`, `kubetune.evaluate.lm_eval_suite`)."""

    task: str | None = Field(
        None, description="`<folder>_<split>` under task_dir, e.g. mmlu_test (split test, validation or val); "
                          "setting it makes `kubetune eval` run the benchmark.",
    )
    task_dir: str = Field(
        "evaluation", description="Folder (or s3:// prefix) holding one folder per benchmark: mapping.json and "
                                  "dev/, val/, test/ folders of <subject>_<split>.csv.",
    )
    batch_size: int = Field(4, gt=0, description="Questions per forward pass.")
    lang: Literal["en", "zh"] = Field("en", description="Prompt layout: English or Chinese instructions.")
    n_shot: int = Field(5, ge=0, description="Solved examples from the subject's dev split before each question.")
    save_dir: str | None = Field(
        None, description="Write results.json (every answer) and results.log (accuracy per category) here; it must "
                          "not exist yet.",
    )
    lm_eval_tasks: str | list[str] | None = Field(
        None, description="lm-evaluation-harness tasks to run on the model (a list, or comma-separated); with "
                          "lm_eval_include_path for task YAMLs of your own (kubetune.evaluate.lm_eval_suite).",
    )
    lm_eval_include_path: str | None = Field(
        None, description="A folder (or s3:// prefix) of lm-eval task YAMLs; their relative data_files are read "
                          "from it.",
    )
    lm_eval_num_fewshot: int | None = Field(None, ge=0, description="lm-eval's num_fewshot (None: each task's own).")
    lm_eval_limit: float | None = Field(
        None, gt=0, description="lm-eval's limit: at most this many documents per task (below 1: a fraction).",
    )
    lm_eval_batch_size: int = Field(4, gt=0, description="lm-eval's batch size.")
    lm_eval_bootstrap_iters: int = Field(
        100000, ge=0, description="lm-eval's bootstrap iterations for the standard errors of non-mean metrics "
                                  "(0: none).",
    )
    download_mode: Literal["reuse_dataset_if_exists", "reuse_cache_if_exists", "force_redownload"] = Field(
        "reuse_dataset_if_exists", description="Accepted for LLaMA-Factory configs: the CSV files are read as "
                                               "they are each run (an s3:// task_dir is cached by its ETags).",
    )
