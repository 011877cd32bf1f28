"""A `NodeJob` as a Training Operator v1 `PyTorchJob` (kubeflow.org/v1), for clusters without Kubeflow Trainer v2.

One `Master` pod (node 0) and `nodes - 1` `Worker` pods, each the same pod: the trainer image in the container the
operator requires (`pytorch`), the GPU limit, the shared volume, node selector and tolerations. The operator
gives every pod `MASTER_ADDR`, `MASTER_PORT`, and `WORLD_SIZE` / `RANK` counting *pods*;
`kubetune.components.train_ranks --node` reads those as the node count and this node's rank, and starts
`NPROC_PER_NODE` ranks under torchrun itself.

Gang scheduling is the operator's (started with `--gang-scheduler-name=volcano` or `scheduler-plugins`): it makes
the job's PodGroup and sets the pods' scheduler. With `pod_group_policy` the job asks for all its pods at once
(`runPolicy.schedulingPolicy.minAvailable`: every node) and, with `volcano_queue`, names the Volcano queue.

The pod template is plain Kubernetes (`V1PodTemplateSpec`); the tests check it against the kubernetes client's
models. The PyTorchJob wrapper has no Python models installed here (the v1 SDK is a separate, retired package).
"""

from __future__ import annotations

from typing import Any

from kubetune.launch.node_job import NodeJob

GROUP = "kubeflow.org"
VERSION = "v1"
PLURAL = "pytorchjobs"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator finds the training container by this name
NODE_ZERO_SELECTOR = ("training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master,"
                      "training.kubeflow.org/replica-index=0")


def pod_template(job: NodeJob) -> dict[str, Any]:
    """The pod every node runs (the Master's and the Workers' are the same)."""
    container: dict[str, Any] = {"name": CONTAINER, "image": job.image, "command": job.command,
                                 "env": [*job.env, {"name": "NPROC_PER_NODE", "value": str(max(job.gpus, 1))}],
                                 "resources": job.resources()}
    spec: dict[str, Any] = {"containers": [container]}
    if job.pvc:
        container["volumeMounts"] = [job.volume_mount()]
        spec["volumes"] = [job.volume()]
    if job.node_selector:
        spec["nodeSelector"] = job.node_selector
    if job.tolerations:
        spec["tolerations"] = job.tolerations
    return {"metadata": {"labels": dict(job.labels)}, "spec": spec}


def pytorchjob_manifest(job: NodeJob) -> dict[str, Any]:
    """The PyTorchJob for `job`, as the JSON the Kubernetes API takes."""
    # Never: a pod restarted alone cannot rejoin the others' static rendezvous, and a deterministic failure would
    # restart until the timeout; the failed job is kept for kubectl and the step's retry starts it afresh
    # (resuming from the checkpoints on the shared volume)
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": pod_template(job)}}
    if job.nodes > 1:
        replicas["Worker"] = {"replicas": job.nodes - 1, "restartPolicy": "Never", "template": pod_template(job)}
    # pods stay after the job ends (their logs with them) until the job is deleted
    run_policy: dict[str, Any] = {"cleanPodPolicy": "None"}
    if job.pod_group_policy:
        run_policy["schedulingPolicy"] = {"minAvailable": job.nodes,
                                          **({"queue": job.volcano_queue} if job.volcano_queue else {})}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": job.name, "namespace": job.namespace, "labels": dict(job.labels)},
            "spec": {"runPolicy": run_policy, "pytorchReplicaSpecs": replicas}}
