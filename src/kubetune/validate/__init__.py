"""Preflight: the rules that consult the world, run before any work — every problem at once.

`kubetune.config` parses a config and checks its types and cross-field rules, reading nothing else.
This layer sits above data/, model/ and rl/ and asks whether a command can run with that config
here: datasets (and the first row of each, for its kind), templates, model, adapter and reward-model
folders, output_dir, installed kernels. `STAGE_RULES` (in `rules`) says which stage runs which rules.
"""

from kubetune.validate.pipeline import preflight_pipeline
from kubetune.validate.preflight import Command, preflight, purpose, world_problems

__all__ = ["Command", "preflight", "preflight_pipeline", "purpose", "world_problems"]
