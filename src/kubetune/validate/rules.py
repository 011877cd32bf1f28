"""Which world rules each stage runs: one plain dict, stage → rules.

A rule takes a validated `RunConfig` and returns the problems it finds in the world (empty when
there are none); `kubetune.validate.preflight` runs them with the checks every command makes.
"""

from __future__ import annotations

from collections.abc import Callable

from kubetune.config.errors import Problem
from kubetune.config.schema import RunConfig
from kubetune.validate import datasets, distributed, machine, models

Rule = Callable[[RunConfig], list[Problem]]

# Every stage, every command: what the machine must have, and the files that say how training is spread.
EVERY_STAGE: tuple[Rule, ...] = (machine.kernels_installed, machine.optimizer_packages_installed,
                                 distributed.deepspeed_config, distributed.fsdp_config_file,
                                 distributed.sharded_parameters_limits, models.special_tokens_file,
                                 models.pickle_checkpoints)

STAGE_RULES: dict[str, tuple[Rule, ...]] = {
    "pt": (),
    "sft": (),
    "rm": (datasets.rm_ranking_data, models.trained_reward_model),
    "dpo": (datasets.dpo_pairs, models.reference_model_folders),
    "kto": (datasets.kto_tagged_responses, models.reference_model_folders),
    "ppo": (models.reward_source, datasets.ppo_prompts, models.reference_model_folders),
}


def stage_problems(cfg: RunConfig) -> list[Problem]:
    """Every problem the rules of `cfg`'s stage (and of every stage) find.

    Args:
        cfg: a config `kubetune.config.load_config` accepted.
    """
    return [problem for rule in (*EVERY_STAGE, *STAGE_RULES[cfg.method.stage]) for problem in rule(cfg)]
