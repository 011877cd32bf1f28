"""Tracking fixtures: one real `mlflow server` per test session (per xdist worker), stopped after it.

The server fixtures (`mlflow_server`, `mlflow_server_process`) live in the root conftest; these add a
client on it and unique names, and (from tests/tracking_stores.py) the fault tests' `store`: a real
`mlflow server` on sqlite or on PostgreSQL, with `backend` naming which.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from tracking_stores import backend, postgres_mlflow, store  # noqa: F401  (fixtures, shared by the modules here)


@pytest.fixture
def mlflow_client(mlflow_server: str) -> Any:
    """An `MlflowClient` on the test server, for arranging and inspecting runs directly."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


@pytest.fixture
def unique() -> str:
    """A short random suffix: tests share one server, so their experiments and models need their own names."""
    return uuid.uuid4().hex[:8]
