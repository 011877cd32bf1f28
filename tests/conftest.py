"""Shared fixtures: a tiny random Llama built from a config, with the real SmolLM2 tokenizer.

The tiny model keeps every training test to seconds on a 2-core CPU; the tokenizer is the
embedded model's, so templates and masks are exercised on a real vocabulary.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests never reach a hub; say so up front instead of timing out on one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread per process (subprocesses inherit it; set before torch is imported): `make test` runs two
# workers on two cores, and torch's default of a thread per core oversubscribes them — on tiny-model tensors the
# threads then wait on each other at every op (a 4-update tiny PPO run: 131 s with 2 threads, 5 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]

# tests/ has no __init__.py, so make its shared helpers (moto_server.py, mlflow_server.py) importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlflow_server import start_mlflow_server  # noqa: E402
from moto_server import start_moto_server  # noqa: E402

# the `make chaos` table (the chaos_row fixture, the chaos marker, --chaos-table)
pytest_plugins = ["chaos_table"]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real embedded model directory (converted from GGUF once per machine)."""
    from kubetune.model.embedded import embedded_model_dir

    return embedded_model_dir()


def build_tiny_model(path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A 2-layer, hidden-64 Llama with the SmolLM2 tokenizer, saved as an HF directory."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private kubetune cache for the tokenised-data cache, so tests never share entries.

    Models still come from the real cache (the embedded model is converted once per machine).
    """
    from kubetune.model import embedded

    real = embedded.embedded_model_dir()
    cache = tmp_path / "kt-cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / real.name).symlink_to(real)
    monkeypatch.setenv("KUBETUNE_CACHE", str(cache))
    return cache


# --- a real S3 API: one moto_server per test session (per xdist worker), a fresh bucket per test ---


@pytest.fixture(scope="session")
def moto_env() -> Iterator[dict[str, str]]:
    """The running server's client environment (endpoint, dummy keys, region)."""
    with start_moto_server() as server:
        yield server.env


@pytest.fixture
def s3_env(moto_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Point boto3 and kubetune's cache at the test server and a per-test cache folder."""
    for var in ("AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    for var, value in moto_env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    return moto_env


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> str:
    """A new, empty bucket on the test server (tests never share state through buckets)."""
    from kubetune.storage import s3_client

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def client(s3_env: dict[str, str]) -> Any:
    """A boto3 S3 client for the test server, for arranging and inspecting objects directly."""
    from kubetune.storage import s3_client

    return s3_client()


# --- a real MLflow tracking server (sqlite backend) on a free loopback port, one per session/worker ---

@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The server (URL, process, data folder), started once per session and stopped after it.

    It may still be starting: call `wait_until_up()` before using it (start-up takes 5-20 s).
    """
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), wait=False) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: Any) -> str:
    """`mlflow server` with a sqlite store and local artifacts: its URL, once it answers."""
    return mlflow_server_process.wait_until_up().url
