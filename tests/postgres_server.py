"""Start a real PostgreSQL (Debian's `postgresql` package) for tests, as an unprivileged user, and an `mlflow
server` whose backend store it is — the production chart's tracking store; sqlite serialises writers and hides
races.

```python
from postgres_server import start_postgres, start_mlflow_on  # after putting tests/ on sys.path

with start_postgres() as pg, start_mlflow_on(pg.url("mlflow"), tmp_dir / "mlflow") as server:
    MlflowClient(server.url)
```

`initdb` and `pg_ctl` come from PATH or `/usr/lib/postgresql/<version>/bin`; `postgres_missing()` says why
there are none (tests skip with that reason). PostgreSQL refuses to run as root: as root, the cluster is owned
and run by the user `kt-pg` (created with `useradd` when missing), otherwise by the current user. It listens on
127.0.0.1 only, on a free port, with `trust` authentication (loopback, throw-away data), fsync off.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mlflow_server import MlflowServer, free_port, mlflow_binary

PG_USER = "kt-pg"
"""The unprivileged user that owns and runs the cluster when the tests run as root."""


def pg_bin_dir() -> Path | None:
    """The folder holding `initdb` and `pg_ctl`: beside `initdb` on PATH, else the newest Debian install."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def postgres_missing() -> str | None:
    """Why PostgreSQL tests cannot run here (`None` when they can): a skip reason that says what to install."""
    if pg_bin_dir() is None:
        return ("PostgreSQL is not installed (no initdb on PATH nor in /usr/lib/postgresql/*/bin): "
                "apt-get install -y postgresql")
    try:
        import psycopg2  # noqa: F401  (mlflow's postgresql:// store needs it)
    except ImportError:
        return "psycopg2 is not installed: pip install -e '.[dev]' (psycopg2-binary)"
    return None


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster.

    Attributes:
        port (`int`): where it listens on 127.0.0.1.
        root (`Path`): the temporary folder holding `data/` (the cluster), `socket/` and `postgres.log`.
        user (`str`): the database role, and the OS user that runs the server.
        bin_dir (`Path`): where `pg_ctl` and `createdb` are.
        run_as (`str` or `None`): the user the tools run as (`kt-pg` under root; `None`: the current user).
        startup_s (`float`): seconds for initdb and start.
    """

    port: int
    root: Path
    user: str
    bin_dir: Path
    run_as: str | None
    startup_s: float = 0.0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for `database` (mlflow's `--backend-store-uri`).

        `+psycopg2` names the driver: SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, which we do
        not install.
        """
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its URL."""
        _run([str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
             self.run_as)
        return self.url(name)

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: running sessions are ended) and remove its folder."""
        if self.data_dir.exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                _run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
                     self.run_as)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_postgres(timeout: float = 60.0) -> PostgresServer:
    """initdb a new cluster in a new temporary folder and start it on a free loopback port, as an unprivileged user.

    The folder is made under the system's temporary folder (not pytest's, whose 0700 parents the cluster's
    user could not enter) and removed by `stop()`.

    Args:
        timeout (`float`, *optional*, defaults to `60.0`):
            Seconds to wait for the server to accept connections.

    Returns:
        `PostgresServer`: call `stop()` (or use it as a context manager) when done.

    Raises:
        RuntimeError: PostgreSQL is not installed (the message says what to install).
        subprocess.CalledProcessError: initdb or pg_ctl failed (its output is in the error).
    """
    reason = postgres_missing()
    if reason:
        raise RuntimeError(reason)
    bin_dir = pg_bin_dir()
    assert bin_dir is not None
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="kt-pg-"))
    run_as = _ensure_user() if os.geteuid() == 0 else None
    user = run_as or pwd.getpwuid(os.geteuid()).pw_name
    data, socket_dir, log = root / "data", root / "socket", root / "postgres.log"
    socket_dir.mkdir()
    if run_as:
        os.chmod(root, 0o755)
        for path in (root, socket_dir):
            shutil.chown(path, run_as)
    _run([str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync",
          "--no-instructions"], run_as)
    port = free_port()
    options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(int(timeout)),
          "start"], run_as)
    return PostgresServer(port=port, root=root, user=user, bin_dir=bin_dir, run_as=run_as,
                          startup_s=time.monotonic() - started)


def start_mlflow_on(backend_store_uri: str, root: str | Path, host: str = "127.0.0.1",
                    timeout: float = 120.0) -> MlflowServer:
    """Start `mlflow server` with `backend_store_uri` as its store (artifacts under `root`); wait until it answers.

    Args:
        backend_store_uri (`str`):
            E.g. `PostgresServer.create_database("mlflow")`.
        root (`str` or `Path`):
            Folder for the artifacts and the server log.
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Interface to bind.
        timeout (`float`, *optional*, defaults to `120.0`):
            Seconds to wait (a fresh PostgreSQL database runs every migration first).

    Returns:
        `MlflowServer`: as `mlflow_server.start_mlflow_server` returns.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    command = [mlflow_binary(), "server", "--host", host, "--port", str(port), "--backend-store-uri",
               backend_store_uri, "--artifacts-destination", str(root.resolve() / "artifacts"), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://{host}:{port}"
    return MlflowServer(url=url, process=process, root=root, env={"MLFLOW_TRACKING_URI": url}).wait_until_up(timeout)


def _ensure_user() -> str:
    """The unprivileged `kt-pg` user (created, without a home or a shell, when missing)."""
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        done = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                              capture_output=True, text=True)
        try:
            pwd.getpwnam(PG_USER)  # made by us, or by a parallel test worker that got there first
        except KeyError:
            raise RuntimeError(f"could not create the user {PG_USER} to run PostgreSQL: {done.stderr}") from None
    return PG_USER


def _run(command: list[str], run_as: str | None) -> None:
    """Run a PostgreSQL tool (as `run_as` when given); on failure, raise with its output."""
    done = subprocess.run(command, user=run_as, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)


if __name__ == "__main__":  # by hand: python tests/postgres_server.py
    with start_postgres() as pg:
        print(f"postgres up in {pg.startup_s:.1f} s on port {pg.port}: {pg.create_database('mlflow')}")
        input("enter to stop ")
