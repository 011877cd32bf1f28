"""A `NodeJob` as a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1), built with the SDK's own models.

The objects come from `kubeflow_trainer_api` (the `kubeflow` SDK's generated models of the Trainer API), so a
field the API does not have, or a value of the wrong type, fails here, in the launcher, not in the controller.

What goes where in the TrainJob:

- `spec.trainer`: image, command, `numNodes`, `numProcPerNode` (one process per GPU), `resourcesPerNode` (the GPU
  limit, cpu, memory) and `env` — the trainer container's environment; Trainer adds the torchrun variables
  (`PET_NNODES`, `PET_NODE_RANK`, `PET_NPROC_PER_NODE`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`), which
  `kubetune.components.train_ranks --node` reads.
- `spec.runtimePatches`: what a TrainJob may change of its runtime's pods — node selector, tolerations, the shared
  volume and its mount in the `node` container — as one patch owned by kubetune (`manager`).
  With `volcano_queue`, the same patch sets the JobSet's `scheduling.volcano.sh/queue-name` annotation, which
  Trainer's Volcano plugin copies into the job's PodGroup.
- `metadata.labels`: the Kueue queue (`kueue.x-k8s.io/queue-name`), kubetune's run and stage.

Gang scheduling itself is not the TrainJob's to set: `podGroupPolicy` (volcano, coscheduling) is a field of the
runtime, and a TrainJob's patches reach only its template (labels, annotations, a few pod fields, no
`schedulerName`). So `pod_group_policy` needs a runtime that has it (`kubetune.config.nodes` refuses the stock
`torch-distributed`); `examples/trainer/` holds one for each policy.

`runtimePatches` is the API of the Trainer release these models describe (kubeflow-trainer-api 2.3); older
controllers (2.0/2.1: podSpecOverrides, podTemplateOverrides) do not know it.
"""

from __future__ import annotations

from typing import Any

from kubetune.launch.node_job import NodeJob

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
NODE = "node"  # the replicated job and container of a torch runtime that run the trainer
MANAGER = "kubetune.io/launcher"
VOLCANO_QUEUE = "scheduling.volcano.sh/queue-name"
# how the pods of a TrainJob are labelled (JobSet's labels), to find node 0 and read its log
NODE_ZERO_SELECTOR = ("jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=node,"
                      "batch.kubernetes.io/job-completion-index=0")


def trainjob_manifest(job: NodeJob) -> dict[str, Any]:
    """The TrainJob for `job`, as the JSON the Kubernetes API takes (validated by the SDK's models)."""
    from kubeflow_trainer_api import models

    pod_patch = {"nodeSelector": job.node_selector or None, "tolerations": job.tolerations or None,
                 "volumes": [job.volume()] if job.pvc else None,
                 "containers": [{"name": NODE, "volumeMounts": [job.volume_mount()]}] if job.pvc else None}
    pod_spec = {k: v for k, v in pod_patch.items() if v}
    template: dict[str, Any] = {}
    if job.volcano_queue:
        template["metadata"] = {"annotations": {VOLCANO_QUEUE: job.volcano_queue}}
    if pod_spec:
        template["spec"] = {"replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {"spec": pod_spec}}}}]}
    patch = {"manager": MANAGER, "trainingRuntimeSpec": {"template": template}}
    trainer = models.TrainerV1alpha1Trainer(
        image=job.image, command=job.command, numNodes=job.nodes, numProcPerNode=max(job.gpus, 1),
        env=[models.IoK8sApiCoreV1EnvVar.from_dict(e) for e in job.env],
        resourcesPerNode=models.IoK8sApiCoreV1ResourceRequirements.from_dict(job.resources()))
    train_job = models.TrainerV1alpha1TrainJob(
        apiVersion=f"{GROUP}/{VERSION}", kind=KIND,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=job.name, namespace=job.namespace,
                                                                  labels=job.labels),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtimeRef=models.TrainerV1alpha1RuntimeRef(name=job.runtime, kind="ClusterTrainingRuntime",
                                                        apiGroup=GROUP),
            trainer=trainer,
            runtimePatches=[models.TrainerV1alpha1RuntimePatch.from_dict(patch)] if template else None))
    return train_job.to_dict()
