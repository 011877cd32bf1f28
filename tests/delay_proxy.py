"""An HTTP reverse proxy that holds back chosen requests: a slow network path for one client of a real server.

A race test points one racer at the server through this proxy, so that racer's writes land late — the
interleaving that a stale read turns into a wrong result — every time, not once in a thousand runs.

```python
with DelayProxy(server.url, delay_s=2.0, match=lambda method, path: path.endswith("/alias"), times=1) as proxy:
    MlflowClient(proxy.url)  # the first matching request waits 2 s before it is sent on
```
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from mlflow_server import free_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "content-length", "host"}


class DelayProxy:
    """Forward HTTP requests to `target`; hold each one `match` selects for `delay_s` before forwarding it.

    Args:
        target (`str`):
            `http://host:port` of the real server.
        delay_s (`float`):
            How long a matching request waits.
        match (`Callable[[str, str], bool]`):
            `(method, path) -> bool`: which requests to hold back.
        times (`int`, *optional*):
            Hold back only the first `times` matching requests; all of them when `None`.

    Attributes:
        delayed (`list[str]`): `"METHOD path"` of every request held back, in the order they were sent on.
    """

    def __init__(self, target: str, delay_s: float, match: Callable[[str, str], bool],
                 times: int | None = None) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.delay_s = delay_s
        self.match = match
        self.times = times
        self.delayed: list[str] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self) -> bool:
        """Whether this matching request is one to hold back (counts it)."""
        with self._lock:
            self._matched = getattr(self, "_matched", 0) + 1
            return self.times is None or self._matched <= self.times

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (quiet)
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.match(self.command, self.path) and proxy._take():
                    time.sleep(proxy.delay_s)
                    proxy.delayed.append(f"{self.command} {self.path}")
                upstream = http.client.HTTPConnection(*proxy.target, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        return Handler
