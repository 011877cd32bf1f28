"""Run a `NodeJob` on the cluster and wait for it: create it (or find the one an earlier attempt made), follow node
0's log into the step's log, and end with the job's outcome.

It talks to the Kubernetes API with the kubernetes client — `CustomObjectsApi` for the job, `CoreV1Api` for node
0's pod and its log — rather than the kubeflow SDK's `TrainerClient`: the client creates under a random name when
a retried step must find its own job by name, reads the ClusterTrainingRuntime on every status query, reports a
failure without the controller's message, and knows no PyTorchJob. The TrainJob itself is still built and
checked with the SDK's models (`kubetune.launch.trainjob`).

What happens to the job:

- Complete: the launcher goes on (the outputs are on the shared volume); the job is deleted unless `keep`.
- Failed: the job is kept, so its pods and events can be read (the error says how); a retried step deletes it
  and starts a new one, which resumes from the checkpoints in the work directory.
- Still running when the timeout passes: deleted unless `keep` (it holds GPUs nobody waits for), then an error.
- Found from an earlier attempt and still running, or already Complete: followed, never created a second time.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kubetune.launch import pytorchjob, trainjob
from kubetune.launch.node_job import NodeJob

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class JobKind:
    """Where one kind of job lives in the API, how its outcome reads, and how node 0's pod is found."""

    group: str
    version: str
    plural: str
    kind: str
    succeeded: str  # the condition type that means done
    node_zero: str  # label selector of node 0's pod ({name}: the job's)
    container: str  # the training container in that pod
    manifest: Callable[[NodeJob], dict[str, Any]]


KINDS = {
    "trainjob": JobKind(trainjob.GROUP, trainjob.VERSION, trainjob.PLURAL, trainjob.KIND, "Complete",
                        trainjob.NODE_ZERO_SELECTOR, trainjob.NODE, trainjob.trainjob_manifest),
    "pytorchjob": JobKind(pytorchjob.GROUP, pytorchjob.VERSION, pytorchjob.PLURAL, pytorchjob.KIND, "Succeeded",
                          pytorchjob.NODE_ZERO_SELECTOR, pytorchjob.CONTAINER, pytorchjob.pytorchjob_manifest),
}


class JobFailed(RuntimeError):
    """The job ended Failed (the message is the controller's, with how to look further)."""


class JobTimeout(TimeoutError):
    """The job did not finish within the step's `job_timeout_s`."""


def own_namespace(default: str = "default") -> str:
    """The namespace this pod runs in (its service account's), else `default`."""
    return NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else default


def outcome(obj: dict[str, Any], kind: JobKind) -> tuple[str, str]:
    """("succeeded" | "failed" | "running", the deciding condition's message) of a job object."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        message = condition.get("message") or condition.get("reason") or ""
        if condition.get("type") == kind.succeeded:
            return "succeeded", message
        if condition.get("type") == "Failed":
            return "failed", message
    return "running", ""


def inspect_hint(job: NodeJob, kind: JobKind) -> str:
    resource = f"{kind.plural}.{kind.group}"
    return (f"inspect it with `kubectl -n {job.namespace} describe {resource} {job.name}` and "
            f"`kubectl -n {job.namespace} logs -l {kind.node_zero.format(name=job.name)} --tail=200`; "
            f"remove it with `kubectl -n {job.namespace} delete {resource} {job.name}`")


class JobRunner:
    """Runs one `NodeJob` through the Kubernetes API.

    Args:
        job: the job.
        api_client: a `kubernetes.client.ApiClient` (in a pod: from the in-cluster config).
        poll_s: seconds between status reads.
        out: where node 0's log and the runner's own lines go (the step's log).
    """

    def __init__(self, job: NodeJob, api_client: Any, *, poll_s: float = 10.0, out: TextIO | None = None) -> None:
        from kubernetes import client

        self.job, self.kind, self.poll_s = job, KINDS[job.kind], poll_s
        self.out = out or sys.stderr
        self.custom = client.CustomObjectsApi(api_client)
        self.logs = NodeZeroLog(client.CoreV1Api(api_client), job.namespace,
                                self.kind.node_zero.format(name=job.name), self.kind.container, self.out)

    def say(self, text: str) -> None:
        print(f"kubetune: {self.kind.kind} {self.job.namespace}/{self.job.name}: {text}", file=self.out, flush=True)

    # --- the API calls ---

    def _args(self) -> tuple[str, str, str, str]:
        return self.kind.group, self.kind.version, self.job.namespace, self.kind.plural

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(*self._args(), self.job.name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def create(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            created = self.custom.create_namespaced_custom_object(*self._args(), self.kind.manifest(self.job))
            self.say(f"created ({self.job.nodes} nodes × {self.job.gpus} GPU(s))")
            return created
        except ApiException as err:
            if err.status == 409:  # another attempt of this step created it meanwhile: that one is ours
                found = self.get()
                if found is not None:
                    return found
            raise

    def delete(self, wait_s: float = 300.0) -> None:
        """Delete the job (its pods first) and wait until it is gone, so its name is free again."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(*self._args(), self.job.name,
                                                        body={"propagationPolicy": "Foreground"})
        except ApiException as err:
            if err.status != 404:
                raise
        deadline = time.monotonic() + wait_s
        while self.get() is not None and time.monotonic() < deadline:
            time.sleep(min(self.poll_s, 2.0))
        self.say("deleted")

    # --- the run ---

    def start(self) -> dict[str, Any]:
        """Create the job, or take over the one an earlier attempt of this step created."""
        found = self.get()
        if found is None:
            return self.create()
        state, message = outcome(found, self.kind)
        if state == "failed":
            self.say(f"an earlier attempt's job failed ({message}); replacing it: the new one resumes from the "
                     "checkpoints in the work directory")
            self.delete()
            return self.create()
        self.say(f"found from an earlier attempt of this step ({state}); following it instead of creating another")
        return found

    def run(self) -> None:
        """Start (or find) the job and wait for its end.

        Raises:
            JobFailed: the job's Failed condition (kept for inspection; the message says how).
            JobTimeout: not finished within the job's timeout (deleted unless `keep`).
        """
        self.start()
        deadline = time.monotonic() + self.job.timeout_s
        while True:
            obj = self.get()
            if obj is None:
                raise JobFailed(f"{self.kind.kind} {self.job.namespace}/{self.job.name} disappeared while the step "
                                "waited for it (deleted by someone else?)")
            state, message = outcome(obj, self.kind)
            self.logs.follow()
            if state != "running":
                break
            if time.monotonic() > deadline:
                self.logs.finish()
                if not self.job.keep:
                    self.delete()
                what = (f"it was kept: {inspect_hint(self.job, self.kind)}" if self.job.keep else
                        "it was deleted; raise resources.<stage>.job_timeout_s for a longer run")
                raise JobTimeout(f"{self.kind.kind} {self.job.namespace}/{self.job.name} did not finish within "
                                 f"job_timeout_s={self.job.timeout_s}; {what}")
            time.sleep(self.poll_s)
        self.logs.finish()
        if state == "failed":
            raise JobFailed(f"{self.kind.kind} {self.job.namespace}/{self.job.name} failed: {message or 'no message'}"
                            f"; node 0's log is above. The job was kept: {inspect_hint(self.job, self.kind)}")
        self.say("complete")
        if not self.job.keep:
            self.delete()


class NodeZeroLog:
    """Copies node 0's log into the step's log while the job runs (one reader thread per container start)."""

    def __init__(self, core: Any, namespace: str, selector: str, container: str, out: TextIO) -> None:
        self.core, self.namespace, self.selector, self.container, self.out = core, namespace, selector, container, out
        self.seen: set[tuple[str, int]] = set()
        self.threads: list[threading.Thread] = []

    def follow(self) -> None:
        """Start reading node 0's log when its container has started (again, after a restart)."""
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items:
            if pod.status is None or pod.status.phase not in ("Running", "Succeeded", "Failed"):
                continue  # Pending: no log yet
            restarts = max([s.restart_count for s in pod.status.container_statuses or [] if s.name == self.container]
                           or [0])
            key = (pod.metadata.name, restarts)
            if key in self.seen:
                continue
            self.seen.add(key)
            thread = threading.Thread(target=self._copy, args=(pod.metadata.name,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _copy(self, pod: str) -> None:
        try:
            stream = self.core.read_namespaced_pod_log(pod, self.namespace, container=self.container, follow=True,
                                                       _preload_content=False)
            for line in stream:
                self.out.write(f"[node-0] {line.decode(errors='replace').rstrip()}\n")
                self.out.flush()
        except Exception as err:  # noqa: BLE001 - the log is a convenience: the job's outcome decides the step
            self.out.write(f"kubetune: could not read {pod}'s log: {err}\n")

    def finish(self, wait_s: float = 30.0) -> None:
        """Let the readers reach the end of the log (the pod has ended: its stream closes)."""
        for thread in self.threads:
            thread.join(wait_s)
