"""Start a real `mlflow server` (sqlite store, local artifacts, 127.0.0.1) for tests; reusable from any test folder.

```python
from mlflow_server import start_mlflow_server  # after putting tests/ on sys.path

with start_mlflow_server(tmp_dir) as server:
    MlflowClient(server.url)  # or monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
```

`start_mlflow_server(wait=False)` returns at once (the URL is known before the server answers), so a
caller can do other slow work, e.g. start a subprocess, before `server.wait_until_up()`.

`TcpForwarder` is a small port forwarder: a test can give a client an address where nothing
listens yet, then "bring the server back" by starting to forward that address to a live server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


@dataclass
class MlflowServer:
    """A running `mlflow server` process.

    Attributes:
        url (`str`): `http://127.0.0.1:<port>`, the tracking and registry URI.
        process (`subprocess.Popen`): the server; `stop()` ends it.
        root (`Path`): folder holding `mlflow.db`, `artifacts/` and `server.log`.
        startup_s (`float`): seconds from launch until it first answered `/health` (0 until then).
        env (`dict[str, str]`): the variables a client needs (`MLFLOW_TRACKING_URI`).
    """

    url: str
    process: subprocess.Popen[bytes]
    root: Path
    startup_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    def wait_until_up(self, timeout: float = 90.0) -> MlflowServer:
        """Block until `/health` answers (at once if it did before); stop the server and raise if it never does.

        Args:
            timeout (`float`, *optional*, defaults to `90.0`):
                Seconds to wait (a fresh database runs every migration first).
        """
        if self.startup_s:
            return self
        try:
            _wait_for_health(self, timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - self.started_at
        return self

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def stop(self) -> None:
        """Terminate the server and the workers it spawned (kill them if they ignore SIGTERM for 10 s)."""
        if self.process.poll() is None:
            # The server runs in its own session: signal its process group, so no uvicorn worker outlives it.
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def mlflow_binary() -> str:
    """`mlflow` installed next to this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    if beside.exists():
        return str(beside)
    found = shutil.which("mlflow")
    if found is None:
        raise RuntimeError("mlflow not found: install kubetune's dependencies (pip install -e .)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it); nothing listens on it after this returns."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_mlflow_server(
    root: str | Path | None = None, host: str = "127.0.0.1", timeout: float = 90.0, wait: bool = True
) -> MlflowServer:
    """Start `mlflow server` on a free port with a sqlite store, and (by default) wait until `/health` answers.

    Args:
        root (`str` or `Path`, *optional*):
            Folder for the database, the artifacts and the server log; a new temporary folder when `None`.
            It is not deleted by `stop()` (pytest's `tmp_path_factory` cleans its own folders).
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Interface to bind; loopback keeps it private to this machine.
        timeout (`float`, *optional*, defaults to `90.0`):
            Seconds to wait for the first answer (a fresh database runs every migration first).
        wait (`bool`, *optional*, defaults to `True`):
            `False` returns at once; call `wait_until_up()` before the first request.

    Returns:
        `MlflowServer`: call `stop()` (or use it as a context manager) when done.
    """
    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    root.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    command = [
        mlflow_binary(), "server", "--host", host, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root.resolve() / 'mlflow.db'}",
        # Clients upload artifacts through the server (mlflow-artifacts:/), as they do in a cluster.
        "--artifacts-destination", str(root.resolve() / "artifacts"),
        "--workers", "1",  # one process is plenty for tests and starts fastest
    ]
    # A file, not a pipe, for the server's output: nobody drains a pipe, and a full one blocks the server.
    # No background job runner: it spawns seven huey consumers (each importing mlflow) that tests never use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://{host}:{port}"
    server = MlflowServer(url=url, process=process, root=root, env={"MLFLOW_TRACKING_URI": url})
    return server.wait_until_up(timeout) if wait else server


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # start_new_session=True made the server's pid its group id


def _wait_for_health(server: MlflowServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            output = server.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server exited with {server.process.returncode}:\n{output}")
        try:
            urllib.request.urlopen(server.url + "/health", timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    output = server.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"mlflow server did not answer on {server.url} within {timeout:.0f} s:\n{output}")


class TcpForwarder:
    """Forward connections from a local port to `target` (host, port), once `start()` is called.

    Until then nothing listens on `port`, so a client pointed at it sees a server that is down.

    Args:
        target (`tuple[str, int]`):
            Where accepted connections are forwarded.
        port (`int`, *optional*):
            The port to listen on later; a free one when `None`.
    """

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen on `port` and forward each connection in its own threads."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Stop listening (connections already forwarded end when either side closes)."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)  # pass the half-close on, so HTTP keep-alive ends cleanly


if __name__ == "__main__":  # handy by hand: python tests/mlflow_server.py
    # SIGTERM too should stop the server (a background job ignores Ctrl-C): exit through the `with`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with start_mlflow_server() as running:
        print(f"mlflow server up in {running.startup_s:.1f} s; data in {running.root}")
        print("\n".join(f"export {k}={v}" for k, v in running.env.items()))
        with contextlib.suppress(KeyboardInterrupt):
            running.process.wait()
