"""Start a real `moto_server` (an S3 API on 127.0.0.1) for tests; reusable from any test folder.

```python
from moto_server import start_moto_server  # after putting tests/ on sys.path

with start_moto_server() as server:
    os.environ.update(server.env)  # or monkeypatch.setenv each
```
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


@dataclass
class MotoServer:
    """A running `moto_server` process.

    Attributes:
        endpoint (`str`): `http://127.0.0.1:<port>`.
        process (`subprocess.Popen`): the server; `stop()` ends it.
        env (`dict[str, str]`): the variables a client needs (endpoint, dummy keys, region).
    """

    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Terminate the server (kill it if it ignores SIGTERM for 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def moto_server_binary() -> str:
    """`moto_server` installed next to this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.exists():
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server not found: install the dev extra (moto[server])")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_moto_server(host: str = "127.0.0.1", timeout: float = 30.0) -> MotoServer:
    """Start `moto_server` on a free port and wait until it answers HTTP.

    Args:
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Interface to bind; loopback keeps it private to this machine.
        timeout (`float`, *optional*, defaults to `30.0`):
            Seconds to wait for the first answer before giving up.

    Returns:
        `MotoServer`: call `stop()` (or use it as a context manager) when done.
    """
    port = free_port(host)
    # A file, not a pipe, for the server's output: nobody drains a pipe, and a full one blocks it.
    with tempfile.NamedTemporaryFile(prefix="moto_server-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [moto_server_binary(), "-H", host, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    endpoint = f"http://{host}:{port}"
    server = MotoServer(
        endpoint=endpoint,
        process=process,
        log_path=Path(log.name),
        env={
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    try:
        _wait_until_up(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_up(server: MotoServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            output = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"moto_server exited with {server.process.returncode}:\n{output}")
        try:
            urllib.request.urlopen(server.endpoint + "/moto-api/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {server.endpoint} within {timeout:.0f} s")


if __name__ == "__main__":  # handy by hand: python tests/moto_server.py
    with start_moto_server() as running:
        print("\n".join(f"export {k}={v}" for k, v in running.env.items()))
        with contextlib.suppress(KeyboardInterrupt):
            running.process.wait()
