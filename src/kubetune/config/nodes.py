"""Which steps may run on several nodes (`resources.<step>.nodes`), and what that needs: pure checks of the config.

A step with `nodes > 1` runs its stage as a Kubeflow Trainer job (one pod per node, `gpus` each) and waits for
it; the nodes share the stage's work directory on the model-cache PVC, so it must be one every node can mount.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.config.errors import Problem

# the steps that train (and so may span nodes); the names are `Stage`'s
TRAINING_STEPS = ("sft", "pt", "rm", "dpo", "kto", "ppo")


def node_problems(resources: Mapping[str, Any], training_steps: tuple[str, ...], model_cache_pvc: str | None,
                  origin: str) -> list[Problem]:
    """Every `nodes` setting that cannot run, each naming its key.

    Args:
        resources: the `resources` section (step name → `Resources`).
        training_steps: the step names that train (`TRAINING_STEPS`).
        model_cache_pvc: `model_cache.pvc` (the nodes' shared work directory; None: no volume).
        origin: the config file, for the messages.
    """
    problems: list[Problem] = []
    many = {step: res for step, res in resources.items() if res.nodes > 1}
    for step, res in many.items():
        key = f"resources.{step}.nodes"
        if step == "default":
            problems.append(Problem(key, res.nodes, origin, "`default` applies to every step, and only training "
                                    "steps run on several nodes", "set nodes under resources.<stage> (sft, dpo, ...)"))
        elif step not in training_steps:
            problems.append(Problem(key, res.nodes, origin, f"{step} is not a training step; only "
                                    f"{', '.join(training_steps)} run on several nodes", "remove it (or set 1)"))
        elif res.gpus == "auto":
            problems.append(Problem(f"resources.{step}.gpus", "auto", origin, f"with nodes: {res.nodes} the GPUs "
                                    "are per node and must be given", "set gpus to each node's GPU count, e.g. 8"))
    if many and not model_cache_pvc and any(step in training_steps for step in many):
        first = next(iter(many))
        problems.append(Problem("model_cache.pvc", None, origin, f"resources.{first}.nodes: {many[first].nodes} "
                                "needs a volume every node mounts (the stage's work directory: data, checkpoints, "
                                "the trained model)", "name a ReadWriteMany PVC in model_cache.pvc"))
    return problems
