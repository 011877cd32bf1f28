"""Which steps may run on several nodes (`resources.<step>.nodes`), and what that needs: pure checks of the config.

A step with `nodes > 1` runs its stage as a Kubeflow Trainer job (one pod per node, `gpus` each) and waits for
it; the nodes share the stage's work directory on the model-cache PVC, so it must be one every node can mount.
Such a job may be gang-scheduled (`pod_group_policy`, Kubeflow Trainer's name): a TrainJob by its runtime's
`podGroupPolicy`, which Trainer's stock `torch-distributed` runtime does not have, so the config must name one
that does (`examples/trainer/` has two).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.config.errors import Problem

# the steps that train (and so may span nodes); the names are `Stage`'s
TRAINING_STEPS = ("sft", "pt", "rm", "dpo", "kto", "ppo")
# Kubeflow Trainer's own torch runtime: no podGroupPolicy (its chart's files/runtimes/torch-distributed.yaml)
STOCK_RUNTIME = "torch-distributed"


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
    launched = {step: res for step, res in many.items() if step in training_steps}
    problems += gang_problems(resources, launched, origin)
    if many and not model_cache_pvc and launched:
        first = next(iter(many))
        problems.append(Problem("model_cache.pvc", None, origin, f"resources.{first}.nodes: {many[first].nodes} "
                                "needs a volume every node mounts (the stage's work directory: data, checkpoints, "
                                "the trained model)", "name a ReadWriteMany PVC in model_cache.pvc"))
    return problems


def gang_problems(resources: Mapping[str, Any], many: Mapping[str, Any], origin: str) -> list[Problem]:
    """Every `pod_group_policy` / `volcano_queue` that would not gang-schedule anything, each naming its key.

    Args:
        resources: the `resources` section (step name → `Resources`).
        many: its training steps with `nodes > 1` (those that launch a job).
        origin: the config file, for the messages.
    """
    problems: list[Problem] = []
    for step, res in resources.items():
        policy = res.pod_group_policy
        if policy and step == "default":
            problems.append(Problem(f"resources.{step}.pod_group_policy", policy, origin, "`default` applies to "
                                    "every step, and only a training step on several nodes is gang-scheduled",
                                    "set it under resources.<stage>, beside nodes"))
        elif policy and res.nodes == 1:
            trains = step in TRAINING_STEPS
            problems.append(Problem(f"resources.{step}.pod_group_policy", policy, origin, "gang scheduling is for "
                                    "a job on several nodes; this step runs in one pod (nodes: 1)",
                                    "set nodes above 1, or remove pod_group_policy" if trains else
                                    f"remove it: {step} always runs in one pod"))
        if res.volcano_queue and policy != "volcano":
            problems.append(Problem(f"resources.{step}.volcano_queue", res.volcano_queue, origin, "a Volcano queue "
                                    f"needs pod_group_policy: volcano (it is {policy or 'unset'})",
                                    "set pod_group_policy: volcano, or remove volcano_queue"))
    for step, res in many.items():
        if res.pod_group_policy and res.trainer == "trainjob" and res.runtime == STOCK_RUNTIME:
            policy = res.pod_group_policy
            problems.append(Problem(f"resources.{step}.runtime", res.runtime, origin, "a TrainJob is gang-scheduled "
                                    f"by its runtime's podGroupPolicy, and Kubeflow Trainer's {STOCK_RUNTIME} has "
                                    "none", f"name a ClusterTrainingRuntime with podGroupPolicy.{policy}, e.g. "
                                    f"`kubectl apply -f examples/trainer/{STOCK_RUNTIME}-{policy}.yaml` and set "
                                    f"runtime: {STOCK_RUNTIME}-{policy}"))
    return problems
