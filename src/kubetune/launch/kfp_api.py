"""The Kubeflow Pipelines API, for people: a checked connection, and errors that say what to check.

Everything else in `kubetune.launch` that talks to KFP goes through `connect` and `api_call`: each call's
transport or API error becomes a `KfpBackendError` naming the URL, what the server said, and what to check
(the port-forward, a token, the namespace). Also the list helpers the pipelines and recurring runs share.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import kfp
import kfp_server_api
import urllib3

__all__ = ["PAGE_SIZE", "PORT_FORWARD", "KfpBackendError", "all_pages", "api_call", "client_url", "connect",
           "name_filter", "normalise_host"]

logger = logging.getLogger(__name__)

PORT_FORWARD = "kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow"
PAGE_SIZE = 100
_MAX_PAGES = 1000  # a server that keeps returning a page token must not loop us forever
_FILTER_EQUALS = 1  # v2beta1 Predicate.Operation.EQUALS, as kfp.Client itself sends it


class KfpBackendError(RuntimeError):
    """A call to the KFP backend failed; the message names the URL, what the server said, and what to check."""


class _Client(kfp.Client):
    """`kfp.Client` that remembers its URL and whose start-up health check tries once.

    The stock check retries 5 times, 5 s apart, on any API error: a wrong token waits 25 s and then fails with
    a bare `TimeoutError`. One attempt, whose error carries the server's answer, is what a person needs.
    """

    def __init__(self, url: str, *, namespace: str | None, existing_token: str | None) -> None:
        self.url = url
        with warnings.catch_warnings():  # "only works with KFP >= 2.0.0-beta.2": noise for every user
            warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
            super().__init__(host=url, namespace=namespace or "kubeflow", existing_token=existing_token)

    def get_kfp_healthz(self, sleep_duration: int = 5) -> kfp_server_api.V2beta1GetHealthzResponse:
        """One health check, no retries (`sleep_duration` is accepted for kfp.Client's signature)."""
        return self._healthz_api.healthz_service_get_healthz()


def connect(host: str, *, namespace: str | None = None, existing_token: str | None = None) -> kfp.Client:
    """Open a `kfp.Client` on `host` and check that the KFP API answers.

    Args:
        host (`str`): the KFP API URL, e.g. `http://localhost:8080` (port-forward of `ml-pipeline-ui`); see
            [`normalise_host`] for URLs without a scheme.
        namespace (`str`, *optional*): the Kubeflow profile namespace on a multi-user install; `None` for a
            single-user one.
        existing_token (`str`, *optional*): a bearer token sent with every request.

    Returns:
        `kfp.Client`: a client whose `url` attribute is the normalised host.

    Raises:
        [`KfpBackendError`]: the host cannot be reached or refuses the health check.
    """
    url = normalise_host(host)
    with api_call(url, "check the KFP API's health (GET /apis/v2beta1/healthz)"):
        client = _Client(url, namespace=namespace, existing_token=existing_token)
        # kfp.Client only checks health when no namespace is set; check once either way so a wrong URL or
        # token fails here, with a message about the connection, not in the middle of an upload.
        if client.get_user_namespace():
            client.get_kfp_healthz()
    return client


def normalise_host(host: str) -> str:
    """The KFP API URL with a scheme and no trailing slash.

    Args:
        host (`str`): a URL; without a scheme, `http://` is assumed for loopback and cluster-internal names
            (`localhost:8080`, `ml-pipeline:8888`, `*.svc`, `*.svc.cluster.local`) and `https://` otherwise.

    Returns:
        `str`: e.g. `http://localhost:8080`.

    Raises:
        `ValueError`: an empty host or a scheme other than http/https.
    """
    text = (host or "").strip().rstrip("/")
    if not text:
        raise ValueError(f"host is required: the KFP API URL, e.g. http://localhost:8080 after `{PORT_FORWARD}`")
    if "://" not in text:
        name = urlsplit("//" + text).hostname or ""
        internal = name in ("localhost", "127.0.0.1", "::1") or "." not in name
        internal = internal or name.endswith((".svc", ".svc.cluster.local"))
        text = ("http://" if internal else "https://") + text
    if urlsplit(text).scheme not in ("http", "https"):
        raise ValueError(f"host {host!r}: the KFP API is served over http:// or https://")
    return text


def client_url(client: kfp.Client) -> str:
    """The KFP API URL a client talks to (from [`connect`], or a plain `kfp.Client`)."""
    return getattr(client, "url", None) or client._existing_config.host  # a plain kfp.Client has no .url


def name_filter(name: str) -> str:
    """A v2beta1 list filter for objects whose `display_name` is `name`."""
    return json.dumps({"predicates": [{"operation": _FILTER_EQUALS, "key": "display_name", "stringValue": name}]})


def all_pages(fetch: Callable[[str], Any], items: str) -> list[Any]:
    """Every item of a paginated list call, following `next_page_token`.

    Args:
        fetch (`Callable[[str], Any]`): one list call, given the page token (`""` for the first page).
        items (`str`): the attribute of a page that holds its items, e.g. `"pipelines"`.
    """
    found: list[Any] = []
    token = ""
    for _ in range(_MAX_PAGES):
        page = fetch(token)
        found.extend(getattr(page, items) or [])
        token = page.next_page_token or ""
        if not token:
            break
    return found


@contextlib.contextmanager
def api_call(url: str, what: str) -> Iterator[None]:
    """Turn one KFP call's transport or API error into a [`KfpBackendError`] that says what to check.

    kfp.Client also prints links ("Run details: ...") to stdout; they go to the debug log instead, since the
    results carry the URLs and a CLI's stdout is for its own output.

    Args:
        url (`str`): the KFP API URL, named in the message.
        what (`str`): what the call was trying to do, e.g. `"upload pipeline 'demo'"`.
    """
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            yield
    except kfp_server_api.ApiException as error:
        raise KfpBackendError(_api_error_message(url, what, error)) from error
    except urllib3.exceptions.HTTPError as error:
        raise KfpBackendError(_unreachable_message(url, what, getattr(error, "reason", None) or error)) from error
    finally:
        if chatter.getvalue().strip():
            logger.debug("kfp: %s", chatter.getvalue().strip())


def _unreachable_message(url: str, what: str, reason: object) -> str:
    return (
        f"cannot reach the Kubeflow Pipelines API at {url} (trying to {what}): {reason}\n"
        f"Check:\n"
        f"  - the URL: through a port-forward it is http://localhost:8080; start one with\n"
        f"        {PORT_FORWARD}\n"
        f"    and keep it running (from a pod in the cluster: http://ml-pipeline.kubeflow:8888)\n"
        f"  - on a multi-user Kubeflow (Istio/Dex in front of the API), pass a bearer token (existing_token)"
    )


_STATUS_HINTS = {
    401: "The API wants credentials: pass a bearer token (existing_token); on a multi-user Kubeflow, a "
    "ServiceAccount token with the audience pipelines.kubeflow.org.",
    403: "The credentials were accepted but lack permission: on a multi-user Kubeflow, pass namespace=<your "
    "profile namespace> and a token of an identity that may use it.",
    404: "The URL answers but not as the KFP API, or the object is gone: point host at the KFP API (the "
    "ml-pipeline-ui port-forward, or http://ml-pipeline.kubeflow:8888), not at another service.",
    409: "That name is taken on the backend: pass another version_name, or none to get <version>-<time>-<hash>.",
}


def _api_error_message(url: str, what: str, error: kfp_server_api.ApiException) -> str:
    if not error.status:  # kfp_server_api reports TLS and similar transport failures as status 0
        return _unreachable_message(url, what, error.reason)
    detail = _server_message(error.body) or error.reason
    verb = "refused to" if 400 <= error.status < 500 else "failed to"
    message = f"the Kubeflow Pipelines API at {url} {verb} {what}: HTTP {error.status} {error.reason}: {detail}"
    hint = _STATUS_HINTS.get(error.status)
    return f"{message}\n{hint}" if hint else message


def _server_message(body: Any) -> str:
    """The human part of an error body: grpc-gateway's `message`, the upload server's `error_message`, or text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(str(body).split())[:500]
    if isinstance(data, dict):
        for key in ("message", "error_message", "error"):
            if data.get(key):
                return str(data[key])
    return json.dumps(data)[:500]