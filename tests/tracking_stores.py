"""The two backend stores a real `mlflow server` runs on in the fault tests: sqlite (fast, in `make test`) and
PostgreSQL (the chart's production store, slow: `make chaos`; skipped where PostgreSQL is not installed).

tests/tracking/conftest.py makes them fixtures there; a test takes `store` (the server's URL) and `backend`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_server import postgres_missing, start_mlflow_on, start_postgres

_NO_PG = postgres_missing()
STORES = ["sqlite", pytest.param("postgresql", marks=[pytest.mark.slow,
                                                       pytest.mark.skipif(_NO_PG is not None, reason=_NO_PG or "")])]


@pytest.fixture(scope="module")
def postgres_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An `mlflow server` whose backend store is a real PostgreSQL run by an unprivileged user."""
    with start_postgres() as pg, start_mlflow_on(pg.create_database("mlflow"),
                                                 tmp_path_factory.mktemp("mlflow-pg")) as server:
        yield server.url


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    """The URL of a real `mlflow server` on the parametrised backend store."""
    return request.getfixturevalue("mlflow_server" if request.param == "sqlite" else "postgres_mlflow")


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """`sqlite` or `postgresql`: the store behind `store` (for the chaos table's scenario names)."""
    return request.node.callspec.params["store"]
