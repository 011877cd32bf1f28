"""A stand-in for the Kubeflow Pipelines backend's REST API (v2beta1), for the tests of `kubetune.launch.kfp_*`.

The real KFP backend cannot run here: it needs a Kubernetes cluster (its API server, MySQL, Argo Workflows and the
ScheduledWorkflow controller), and the development machines have none. So this module starts a small HTTP server
on 127.0.0.1 (a free port, one thread) that

- records every request: method, path, query, headers, JSON body, and multipart uploads (file name and bytes);
- answers only the calls `kfp.Client` makes for kubetune's submit/schedule, shaped like KFP 2.x's JSON (field
  names, `recurringRuns` in list answers, int64 as strings, error bodies):
  healthz; pipelines upload / upload_version (multipart); list pipelines (EQUALS filter on the name);
  list pipeline versions (sorted by created_at, paged); experiments create / list; runs create;
  recurring runs create / list / delete / enable / disable.

It runs nothing, does not validate pipeline specs, and supports no other filter operations; `fail()` makes a
route answer with an error, to test what people see.

```python
with FakeKfpServer() as kfp_api:
    submit(package, host=kfp_api.url, pipeline_name="demo")
    assert kfp_api.calls("POST", "/apis/v2beta1/runs")[0].json["runtime_config"]["parameters"] == {...}
```
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
MAX_BODY_BYTES = 32 * 1024 * 1024  # KFP's own upload limit
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
# grpc status codes the real gateway puts in error bodies
_GRPC = {400: 3, 404: 5, 409: 6, 401: 16, 403: 7, 500: 13}


@dataclass
class Upload:
    """One file part of a multipart request."""

    filename: str
    content: bytes
    content_type: str


@dataclass
class RecordedRequest:
    """One request as the fake server received it.

    Attributes:
        method (`str`): `GET`, `POST`, `DELETE`, ...
        path (`str`): the URL path, e.g. `/apis/v2beta1/pipelines/upload`.
        query (`dict[str, str]`): query parameters (last value wins).
        headers (`dict[str, str]`): request headers, names lower-cased.
        json (`Any`): the parsed JSON body, if any.
        form (`dict[str, str]`): multipart text fields.
        files (`dict[str, Upload]`): multipart file fields.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)


class ApiError(Exception):
    """An answer with an error status; `upload=True` uses the upload server's body shape."""

    def __init__(self, status: int, message: str, *, upload: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.upload = upload

    def body(self) -> dict[str, Any]:
        if self.upload:
            return {"error_message": self.message, "error_details": self.message}
        return {"code": _GRPC.get(self.status, 2), "message": self.message, "details": []}


class FakeKfpServer:
    """The fake KFP API; use as a context manager (`with FakeKfpServer() as kfp_api:`).

    Args:
        multi_user (`bool`, *optional*, defaults to `False`): what healthz reports.

    Attributes:
        url (`str`): `http://127.0.0.1:<port>` once started.
        requests (`list[RecordedRequest]`): every request, in order.
        pipelines, versions, experiments, runs, recurring_runs: the server's state, as JSON-like dicts.
    """

    def __init__(self, *, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}  # pipeline id -> versions, oldest first
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self._failures: list[tuple[str, str, ApiError]] = []
        self._clock = itertools.count()
        self._lock = threading.Lock()
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> FakeKfpServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = HTTPServer(("127.0.0.1", 0), handler)  # port 0: the OS picks a free one
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-kfp", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeKfpServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- for tests ---------------------------------------------------------------------------------------------

    def fail(self, method: str, path: str, status: int, message: str) -> None:
        """Answer the next `method` request to `path` with `status` and a KFP-shaped error body carrying `message`."""
        upload = path.endswith(("/upload", "/upload_version"))  # the upload server writes its own error shape
        self._failures.append((method, path, ApiError(status, message, upload=upload)))

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, optionally only those with this method and/or exact path."""
        with self._lock:
            return [r for r in self.requests if (method in (None, r.method)) and (path in (None, r.path))]

    def routes(self) -> list[tuple[str, str]]:
        """(method, path) of every request, in order: the conversation at a glance."""
        return [(r.method, r.path) for r in self.calls()]

    def recurring_runs_named(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.recurring_runs.values() if r["display_name"] == name]

    # --- dispatch ----------------------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(request)
            try:
                self._raise_injected_failure(request)
                for method, pattern, name in _ROUTES:
                    match = re.fullmatch(pattern, request.path)
                    if method == request.method and match:
                        return 200, getattr(self, name)(request, **match.groupdict())
                raise ApiError(404, "Not Found")
            except ApiError as error:
                return error.status, error.body()

    def _raise_injected_failure(self, request: RecordedRequest) -> None:
        for index, (method, path, error) in enumerate(self._failures):
            if method == request.method and path == request.path:
                del self._failures[index]
                raise error

    def _now(self) -> str:
        # One second per event, so "created_at desc" orders exactly as things were created.
        return (_EPOCH + timedelta(seconds=next(self._clock))).strftime("%Y-%m-%dT%H:%M:%SZ")

    # --- routes ------------------------------------------------------------------------------------------------

    def _healthz(self, request: RecordedRequest) -> dict[str, Any]:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    def _upload_pipeline(self, request: RecordedRequest) -> dict[str, Any]:
        upload = _required_upload(request)
        name = request.query.get("display_name") or request.query.get("name") or upload.filename
        if any(p["display_name"] == name for p in self.pipelines.values()):
            raise ApiError(409, "Failed to create a pipeline and a pipeline version", upload=True)
        pipeline = {
            "pipeline_id": str(uuid.uuid4()), "name": name, "display_name": name, "created_at": self._now(),
            "description": request.query.get("description", ""), "namespace": request.query.get("namespace", ""),
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        # KFP's upload creates the first version with the pipeline's name and description.
        first = self._version(pipeline["pipeline_id"], name, pipeline["description"], upload)
        self.versions[pipeline["pipeline_id"]] = [first]
        return _public(pipeline)

    def _upload_version(self, request: RecordedRequest) -> dict[str, Any]:
        upload = _required_upload(request)
        pipeline_id = request.query.get("pipelineid", "")
        if pipeline_id not in self.pipelines:
            raise ApiError(400, "Failed to create a pipeline version", upload=True)
        name = request.query.get("display_name") or request.query.get("name") or upload.filename
        if any(v["display_name"] == name for v in self.versions[pipeline_id]):
            raise ApiError(409, "Failed to create a pipeline version", upload=True)
        version = self._version(pipeline_id, name, request.query.get("description", ""), upload)
        self.versions[pipeline_id].append(version)
        return _public(version)

    def _version(self, pipeline_id: str, name: str, description: str, upload: Upload) -> dict[str, Any]:
        return {
            "pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "name": name,
            "display_name": name, "description": description, "created_at": self._now(), "_content": upload.content,
        }

    def _list_pipelines(self, request: RecordedRequest) -> dict[str, Any]:
        found = _filtered(list(self.pipelines.values()), request.query)
        namespace = request.query.get("namespace")
        if namespace:
            found = [p for p in found if p["namespace"] == namespace]
        return _page(found, request.query, "pipelines")

    def _list_versions(self, request: RecordedRequest, pipeline_id: str) -> dict[str, Any]:
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"Pipeline {pipeline_id} not found")
        return _page(_filtered(self.versions[pipeline_id], request.query), request.query, "pipeline_versions")

    def _list_experiments(self, request: RecordedRequest) -> dict[str, Any]:
        return _page(_filtered(list(self.experiments.values()), request.query), request.query, "experiments")

    def _create_experiment(self, request: RecordedRequest) -> dict[str, Any]:
        body = request.json or {}
        if any(e["display_name"] == body.get("display_name") for e in self.experiments.values()):
            raise ApiError(409, f"Experiment {body.get('display_name')!r} already exists")
        experiment = {
            "experiment_id": str(uuid.uuid4()), "display_name": body.get("display_name", ""),
            "description": body.get("description") or "", "namespace": body.get("namespace") or "",
            "created_at": self._now(), "storage_state": "AVAILABLE",
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _create_run(self, request: RecordedRequest) -> dict[str, Any]:
        body = dict(request.json or {})
        self._check_references(body)
        run = {**body, "run_id": str(uuid.uuid4()), "created_at": self._now(), "state": "PENDING",
               "storage_state": "AVAILABLE"}
        self.runs[run["run_id"]] = run
        return run

    def _create_recurring_run(self, request: RecordedRequest) -> dict[str, Any]:
        body = json.loads(json.dumps(request.json or {}))
        self._check_references(body)
        trigger = body.get("trigger") or {}
        if not (trigger.get("cron_schedule") or trigger.get("periodic_schedule")):
            raise ApiError(400, "Invalid input error: a trigger (cron or periodic schedule) is required")
        # int64 fields travel as strings in KFP's JSON answers.
        if "interval_second" in trigger.get("periodic_schedule", {}):
            trigger["periodic_schedule"]["interval_second"] = str(trigger["periodic_schedule"]["interval_second"])
        run = {**body, "recurring_run_id": str(uuid.uuid4()), "created_at": self._now(),
               "max_concurrency": str(body.get("max_concurrency", "1")), "mode": body.get("mode", "ENABLE"),
               "status": "ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED",
               "service_account": body.get("service_account") or "pipeline-runner"}
        self.recurring_runs[run["recurring_run_id"]] = run
        return run

    def _list_recurring_runs(self, request: RecordedRequest) -> dict[str, Any]:
        found = list(self.recurring_runs.values())
        if request.query.get("experiment_id"):
            found = [r for r in found if r.get("experiment_id") == request.query["experiment_id"]]
        # The real server names this list "recurringRuns" (not snake_case); kfp_server_api expects that.
        return _page(_filtered(found, request.query), request.query, "recurringRuns")

    def _delete_recurring_run(self, request: RecordedRequest, run_id: str) -> dict[str, Any]:
        if self.recurring_runs.pop(run_id, None) is None:
            raise ApiError(404, f"Recurring run {run_id} not found")
        return {}

    def _set_recurring_run_mode(self, request: RecordedRequest, run_id: str, action: str) -> dict[str, Any]:
        if run_id not in self.recurring_runs:
            raise ApiError(404, f"Recurring run {run_id} not found")
        enable = action == "enable"
        self.recurring_runs[run_id].update(mode="ENABLE" if enable else "DISABLE",
                                           status="ENABLED" if enable else "DISABLED")
        return {}

    def _check_references(self, body: dict[str, Any]) -> None:
        if body.get("experiment_id") not in self.experiments:
            raise ApiError(404, f"Experiment {body.get('experiment_id')} not found")
        reference = body.get("pipeline_version_reference") or {}
        known = {v["pipeline_version_id"] for v in self.versions.get(reference.get("pipeline_id", ""), [])}
        if reference.get("pipeline_version_id") not in known:
            raise ApiError(404, f"Pipeline version {reference.get('pipeline_version_id')} not found")


_ROUTES = [
    ("GET", rf"{API}/healthz", "_healthz"),
    ("POST", rf"{API}/pipelines/upload", "_upload_pipeline"),
    ("POST", rf"{API}/pipelines/upload_version", "_upload_version"),
    ("GET", rf"{API}/pipelines", "_list_pipelines"),
    ("GET", rf"{API}/pipelines/(?P<pipeline_id>[^/]+)/versions", "_list_versions"),
    ("GET", rf"{API}/experiments", "_list_experiments"),
    ("POST", rf"{API}/experiments", "_create_experiment"),
    ("POST", rf"{API}/runs", "_create_run"),
    ("POST", rf"{API}/recurringruns", "_create_recurring_run"),
    ("GET", rf"{API}/recurringruns", "_list_recurring_runs"),
    ("DELETE", rf"{API}/recurringruns/(?P<run_id>[^/:]+)", "_delete_recurring_run"),
    ("POST", rf"{API}/recurringruns/(?P<run_id>[^/:]+):(?P<action>enable|disable)", "_set_recurring_run_mode"),
]


class _Handler(BaseHTTPRequestHandler):
    """Parses one request, hands it to the `FakeKfpServer`, writes its JSON answer."""

    fake: FakeKfpServer
    timeout = 10  # a client that stalls mid-request cannot hang the test run

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._answer(413, ApiError(413, "request too large", upload=True).body())
            return
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=parts.path,
            query={key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()},
            headers={key.lower(): value for key, value in self.headers.items()},
        )
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            request.form, request.files = _parse_multipart(content_type, raw)
        elif raw:
            request.json = json.loads(raw)
        status, answer = self.fake.handle(request)
        self._answer(status, answer)

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, str], dict[str, Upload]]:
    message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    form: dict[str, str] = {}
    files: dict[str, Upload] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition") or ""
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            files[name] = Upload(part.get_filename(), payload, part.get_content_type())
        else:
            form[name] = payload.decode()
    return form, files


def _required_upload(request: RecordedRequest) -> Upload:
    if "uploadfile" not in request.files:
        raise ApiError(400, "Failed to read pipeline from file", upload=True)
    return request.files["uploadfile"]


def _filtered(items: list[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
    """Apply a v2beta1 `filter` (JSON predicates); only EQUALS on string fields, as kfp.Client sends."""
    if not query.get("filter"):
        return items
    for predicate in json.loads(query["filter"]).get("predicates", []):
        if predicate.get("operation") not in (1, "EQUALS"):
            raise ApiError(400, f"the fake KFP server supports only EQUALS filters, got {predicate}")
        key = predicate["key"]
        value = predicate.get("stringValue", predicate.get("string_value"))
        items = [item for item in items if item.get(key) == value]
    return items


def _page(items: list[dict[str, Any]], query: dict[str, str], key: str) -> dict[str, Any]:
    """Sort by `sort_by` (`created_at`, optionally `desc`) and cut one page; the token is the next offset."""
    field_name, _, direction = (query.get("sort_by") or "created_at").partition(" ")
    ordered = sorted(items, key=lambda item: str(item.get(field_name, "")), reverse=direction == "desc")
    offset = int(query.get("page_token") or 0)
    size = int(query.get("page_size") or 20) or 20
    page = [_public(item) for item in ordered[offset:offset + size]]
    answer: dict[str, Any] = {"total_size": len(ordered)}
    if page:  # protojson leaves out an empty list, and kfp.Client copes with that (`pipelines is None`)
        answer[key] = page
    if offset + size < len(ordered):
        answer["next_page_token"] = str(offset + size)
    return answer


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record without the fake's private fields (those starting with `_`)."""
    return {key: value for key, value in record.items() if not key.startswith("_")}
