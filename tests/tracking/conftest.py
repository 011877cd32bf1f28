"""Tracking fixtures: one real `mlflow server` per test session (per xdist worker), stopped after it.

The server fixtures (`mlflow_server`, `mlflow_server_process`) live in the root conftest; these add a
client on it and unique names.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest


@pytest.fixture
def mlflow_client(mlflow_server: str) -> Any:
    """An `MlflowClient` on the test server, for arranging and inspecting runs directly."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


@pytest.fixture
def unique() -> str:
    """A short random suffix: tests share one server, so their experiments and models need their own names."""
    return uuid.uuid4().hex[:8]
