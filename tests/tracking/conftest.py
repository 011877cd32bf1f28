"""Tracking fixtures: one real `mlflow server` per test session (per xdist worker), stopped after it.

`mlflow_server` here replaces the root conftest's fixture of the same name for tests/tracking, with
the reusable `start_mlflow_server()` (tests/mlflow_server.py).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ has no __init__.py, so make its shared helpers (mlflow_server.py) importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow_server import MlflowServer, start_mlflow_server  # noqa: E402


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The server (URL, process, data folder), started once and stopped after the session.

    It may still be starting: call `wait_until_up()` before using it, after starting other slow work
    (start-up takes 5-20 s, mostly importing mlflow twice and migrating a fresh database).
    """
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), wait=False) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: MlflowServer) -> str:
    """The server's URL, `http://127.0.0.1:<port>`, once it answers: the tracking and registry URI."""
    return mlflow_server_process.wait_until_up().url


@pytest.fixture
def mlflow_client(mlflow_server: str) -> Any:
    """An `MlflowClient` on the test server, for arranging and inspecting runs directly."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


@pytest.fixture
def unique() -> str:
    """A short random suffix: tests share one server, so their experiments and models need their own names."""
    return uuid.uuid4().hex[:8]
