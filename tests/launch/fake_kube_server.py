"""A stand-in for the Kubernetes API server, for the tests of `kubetune.launch.job_runner` and `train_nodes`.

No cluster runs here (no API server, no Kubeflow Trainer controller, no nodes), so this module starts a small HTTP
server on 127.0.0.1 that answers the calls the real kubernetes client makes for a launcher step:

- custom objects: create / get / delete of `trainjobs.trainer.kubeflow.org/v1alpha1` and
  `pytorchjobs.kubeflow.org/v1` in a namespace (409 on a second create of one name, 404 for a missing one);
- pods: list by label selector (exact `k=v` terms, as the runner sends) and one pod's log (`follow` or not).

What it receives is checked against the real libraries' models: a TrainJob must survive
`kubeflow_trainer_api`'s `TrainerV1alpha1TrainJob` unchanged (a field the API does not have is dropped by
`from_dict`, so the round trip fails), a PyTorchJob's pod templates the kubernetes client's `V1PodTemplateSpec`.

The controller is a script: `on_create(job)` is called with each created object and returns the states it will
report, one per status read (`"running"`, `"complete"`, `"failed: <message>"`; the last repeats), and a node-0
pod with `log` lines appears once the job is running. A test plays the nodes in `on_create` (writes what rank 0
would write), since nothing here runs the job's pods.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

PLURALS = {"trainjobs": ("trainer.kubeflow.org", "v1alpha1", "TrainJob", "Complete"),
           "pytorchjobs": ("kubeflow.org", "v1", "PyTorchJob", "Succeeded")}


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any = None


@dataclass
class Job:
    obj: dict[str, Any]
    states: list[str]
    reads: int = 0
    deleted: bool = False


@dataclass
class FakeKubeServer:
    """`with FakeKubeServer(on_create=...) as kube:` → `kube.api_client()` is a real kubernetes ApiClient for it."""

    on_create: Callable[[dict[str, Any]], list[str]] = lambda obj: ["running", "complete"]
    log: list[str] = field(default_factory=lambda: ["step 1 loss 2.0", "step 2 loss 1.5"])
    calls: list[Call] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)

    def __enter__(self) -> FakeKubeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, body: Any = None, text: str | None = None) -> None:
                data = text.encode() if text is not None else json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                call = Call(self.command, url.path, parse_qs(url.query), body)
                server.calls.append(call)
                status, reply, text = server.route(call)
                self._reply(status, reply, text)

            do_GET = do_POST = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def api_client(self) -> Any:
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def made(self, method: str, fragment: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and fragment in c.path]

    # --- routes ---

    def route(self, call: Call) -> tuple[int, Any, str | None]:
        parts = call.path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) >= 6 and parts[5] in PLURALS:
            return self.custom(call, parts[5], parts[6] if len(parts) > 6 else None)
        if parts[:2] == ["api", "v1"] and parts[4:5] == ["pods"]:
            return self.pods(call, parts[5] if len(parts) > 5 else None, parts[6:7] == ["log"])
        return 404, {"kind": "Status", "code": 404, "message": f"no route {call.path}"}, None

    def custom(self, call: Call, plural: str, name: str | None) -> tuple[int, Any, str | None]:
        succeeded = PLURALS[plural][3]
        if call.method == "POST":
            self.validate(call.body)
            name = call.body["metadata"]["name"]
            if name in self.jobs and not self.jobs[name].deleted:
                return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists",
                             "message": f'{plural} "{name}" already exists'}, None
            obj = json.loads(json.dumps(call.body))
            obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
            self.jobs[name] = Job(obj, self.on_create(obj))
            return 201, obj, None
        job = self.jobs.get(name or "")
        if job is None or job.deleted:
            return 404, {"kind": "Status", "code": 404, "reason": "NotFound",
                         "message": f'{plural} "{name}" not found'}, None
        if call.method == "DELETE":
            job.deleted = True
            return 200, {"kind": "Status", "status": "Success"}, None
        state = job.states[min(job.reads, len(job.states) - 1)]
        job.reads += 1
        conditions = []
        if state == "complete":
            conditions = [{"type": succeeded, "status": "True", "reason": "JobSetCompleted", "message": "done"}]
        elif state.startswith("failed"):
            conditions = [{"type": "Failed", "status": "True", "reason": "JobSetFailed",
                           "message": state.partition(": ")[2]}]
        return 200, {**job.obj, "status": {"conditions": conditions}}, None

    def pods(self, call: Call, name: str | None, log: bool) -> tuple[int, Any, str | None]:
        if log:
            return 200, None, "".join(f"{line}\n" for line in self.log)
        selector = dict(term.split("=", 1) for term in call.query.get("labelSelector", [""])[0].split(",") if term)
        items = []
        for job_name, job in self.jobs.items():
            if job.deleted or job.reads == 0 or job_name not in selector.values():
                continue  # no pod before the job was first seen running
            container = "node" if "jobset.sigs.k8s.io/jobset-name" in selector else "pytorch"
            items.append({"metadata": {"name": f"{job_name}-node-0-0-abcde", "labels": selector},
                          "status": {"phase": "Running", "containerStatuses": [
                              {"name": container, "image": "trainer", "imageID": "", "ready": True,
                               "restartCount": 0}]}})
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}, None

    def validate(self, body: dict[str, Any]) -> None:
        """Record each way `body` is not what the real API's models describe."""
        if body.get("kind") == "TrainJob":
            from kubeflow_trainer_api import models

            again = models.TrainerV1alpha1TrainJob.from_dict(body).to_dict()
            if again != body:
                self.invalid.append(f"TrainJob changed by the SDK's models: {body} -> {again}")
        else:
            from kubernetes import client

            api = client.ApiClient()
            for replica in body["spec"]["pytorchReplicaSpecs"].values():
                template = replica["template"]
                parsed = api._ApiClient__deserialize(template, "V1PodTemplateSpec")
                if api.sanitize_for_serialization(parsed) != template:
                    self.invalid.append(f"pod template changed by V1PodTemplateSpec: {template}")
