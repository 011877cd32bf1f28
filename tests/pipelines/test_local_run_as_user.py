"""`kubetune run` as a normal user with a fresh HOME — the README's first command must not need root.

The test creates a throwaway user (`useradd`), gives it a tiny model and a pipeline config that
names a model-cache PVC (as the demo's does: its mount path, /cache/kubetune, exists only on a
cluster), and runs `kubetune run` as that user from the checkout, which it cannot write to. It
asserts that the pipeline succeeds and that every file the user owns afterwards lies in its HOME,
the output folder or the temp directory. A new user owns nothing else, so `find -user` lists
exactly what the run created.

The pipeline is a dpo one (preprocess → sft → dpo → evaluate → export → register → promote): every
step of the demo's sft pipeline (tests/pipelines/test_local_run.py runs that one in-process) and one
more, and the same run checks, end to end, that the dpo step continuing the SFT adapter takes the SFT model as
its reference: its first loss, before any update, is ln 2 (the policy equals its reference), where a
reference of the base alone would put it far off after an SFT step with a learning rate this large.

The user runs the checkout's own Python when other users can reach it. Where they cannot (here
the checkout's venv is built on a Python under /root), the user gets a venv of the system Python
of the same version whose site imports the checkout's installed packages: the same kubetune and
libraries, run by a Python a normal user has.

Skipped, saying why, where this process cannot create users (it is not root, or `useradd` is
missing), or where the user can reach neither the checkout's Python nor a system one like it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


def _can_run(user: str, python: str) -> bool:
    probe = subprocess.run(["runuser", "-u", user, "--", python, "-c", "import sys"], capture_output=True)
    return probe.returncode == 0


def _python_for(user: str, base: Path) -> str:
    """A Python the user can run that imports kubetune and its dependencies (see the module docstring)."""
    if _can_run(user, sys.executable):
        return sys.executable
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/bin")
    if system is None or not _can_run(user, system):
        pytest.skip(f"the user can run neither {sys.executable} nor a system Python {sys.version_info[:2]}")
    venv = base / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", where], capture_output=True, text=True,
                             check=True).stdout.strip()
    # addsitedir (not a plain path line) so the checkout's own .pth files — kubetune's editable install — apply
    Path(purelib, "kubetune-checkout.pth").write_text(f"import site; site.addsitedir({str(SITE_PACKAGES)!r})\n")
    return str(venv / "bin" / "python")


@pytest.fixture()
def normal_user() -> Iterator[tuple[str, Path]]:
    """A new user and a private base folder (HOME, model, config, output live in it); removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("cannot create a second user here (needs root and useradd/runuser)")
    name = f"kt{uuid.uuid4().hex[:8]}"
    base = Path(tempfile.mkdtemp(prefix="kubetune-user-"))
    base.chmod(0o755)
    home = base / "home"
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name], check=True)
    try:
        home.mkdir()
        shutil.chown(home, name, name)
        yield name, base
    finally:
        subprocess.run(["find", tempfile.gettempdir(), "-xdev", "-user", name, "-delete"], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_a_normal_user_runs_the_pipeline_without_writing_outside_home(normal_user: tuple[str, Path],
                                                                      tiny_model_dir: Path) -> None:
    name, base = normal_user
    model = base / "model"
    shutil.copytree(tiny_model_dir, model)
    config = base / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "as-user", "pipeline": "dpo", "model_name_or_path": str(model), "finetuning_type": "lora",
        "lora_rank": 4, "template": "chatml", "dataset_dir": str(REPO / "data"), "cutoff_len": 48, "max_samples": 8,
        "disable_tqdm": True, "do_sample": False, "max_new_tokens": 4, "per_device_eval_batch_size": 8,
        "stages": {"sft": {"dataset": "kubi_sft", "max_steps": 2, "learning_rate": 5e-2,
                           "per_device_train_batch_size": 4, "logging_steps": 1},
                   "dpo": {"dataset": "kubi_pref", "max_steps": 1, "pref_beta": 0.1,
                           "per_device_train_batch_size": 4, "logging_steps": 1}},
        "evaluation": {"eval_dataset": "kubi_sft_eval", "baseline": False},
        "promotion": {"registered_model": "as-user", "metric": "eval_loss"},
        "model_cache": {"pvc": "kubetune-model-cache", "mount_path": "/cache/kubetune"},
    }))
    for path in (model, *model.rglob("*"), config):
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = base / "out"
    out.mkdir()
    shutil.chown(out, name, name)
    home = base / "home"

    python = _python_for(name, base)
    # one OpenMP thread per step process, as the suite's own processes may have (`env -i` passes nothing on): the
    # other pytest worker shares the cores, and oversubscribed threads wait for each other at every small op
    env = {"HOME": str(home), "PATH": f"{Path(python).parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run(["runuser", "-u", name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                          python, "-m", "kubetune.cli", "run", str(config), "--output", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "champion" in run.stdout
    assert (home / ".cache" / "kubetune" / "tokenized").is_dir(), "the cache is the user's own"
    assert list((out / "work").rglob("adapter_model.safetensors")), "step work directories live under --output"
    # the dpo step's reference is the SFT model: before its first update the policy equals it, so the loss is ln 2
    dpo_log = next(p for p in (out / "work").rglob("trainer_log.jsonl") if "dpo" in p.parts)
    first = json.loads(dpo_log.read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3), first
    assert not Path("/cache/kubetune").exists() or Path("/cache/kubetune").owner() != name

    allowed = (home, out, Path(tempfile.gettempdir()))
    found = subprocess.run(["find", "/", "-xdev", "-user", name], capture_output=True, text=True).stdout.split()
    outside = [p for p in found if not any(Path(p).is_relative_to(root) for root in allowed)]
    assert not outside, f"written outside HOME, --output and the temp directory: {outside[:20]}"
