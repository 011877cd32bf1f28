"""A read-only or too small output_dir fails before training starts, with an error naming output_dir — not at the
first checkpoint an hour in.

Both faults are real file systems, mounted by the test: a tmpfs mounted read-only (the kernel refuses writes with
EROFS, to root too: the suite runs as root here and in CI, and root ignores permission bits, so `chmod` alone
would not make a folder read-only for it) and a tmpfs of a few MiB, smaller than the tiny model's full fine-tuning
checkpoint (weights and AdamW state, about 40 MiB by `kubetune.estimate`). No `shutil.disk_usage` is patched.
Skipped, saying why, where this process cannot mount (not root, or no CAP_SYS_ADMIN).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from kubetune.cli import main
from kubetune.config import load_config
from kubetune.config.errors import ConfigError
from kubetune.estimate import checkpoint_bytes, estimate_config
from kubetune.stages import run_stage
from kubetune.train.disk_space import check_output_dir, needed_bytes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """`tmpfs(size="8m", read_only=False)`: a fresh tmpfs mounted under tmp_path; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str = "8m", read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root with CAP_SYS_ADMIN")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], capture_output=True)


def keys(model_dir: Path, out: Path, **more: object) -> dict:
    return {"model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "full", "dataset": "kubi_sft",
            "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 32, "max_samples": 8,
            "output_dir": str(out), "max_steps": 2, "save_steps": 1, "report_to": "none", "disable_tqdm": True,
            "bf16": False, **more}


@pytest.mark.chaos
def test_a_read_only_output_dir_fails_before_training(chaos_row, tmpfs, tiny_model_dir: Path, cache_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    row = chaos_row("read-only output_dir")
    out = tmpfs(read_only=True) / "run"
    row.runs += 1
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"output_dir.*cannot be written \(Read-only file system\)") as err:
        run_stage(load_config(None, keys(tiny_model_dir, out)))
    assert "mount its volume read-write" in str(err.value)
    assert time.monotonic() - start < 30  # at the stage's start: no model loaded, nothing tokenised
    # the command line says it in one message and exit code 2, no traceback
    config = out.parent.parent / "ro.yaml"
    config.write_text(yaml.safe_dump(keys(tiny_model_dir, out)))
    assert main(["train", str(config)]) == 2
    printed = capsys.readouterr().err
    assert "cannot be written (Read-only file system)" in printed and "Traceback" not in printed
    row.data_lost = 0  # nothing trained, so nothing to lose; what matters is the error came first


@pytest.mark.chaos
def test_an_output_dir_without_room_for_a_checkpoint_fails_before_training(chaos_row, tmpfs, tiny_model_dir: Path,
                                                                           cache_dir: Path) -> None:
    row = chaos_row("output_dir disk too small for a checkpoint")
    cfg = load_config(None, keys(tiny_model_dir, tmpfs(size="8m") / "run"))
    needed, how = needed_bytes(cfg)
    assert needed > 8 * 1024**2, how  # the estimate: weights + AdamW moments of the 3.5M-parameter tiny model
    row.runs += 1
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"output_dir.*has 0\.01 GiB free, and the run writes about") as err:
        run_stage(cfg)
    assert "save_only_model: true" in str(err.value) and "lower save_total_limit" in str(err.value)
    assert time.monotonic() - start < 30
    assert not (Path(cfg.train.output_dir) / "trainer_log.jsonl").exists()  # not one step trained

    # the same run on a disk with room passes the check (and the estimate is not far off what a save writes)
    roomy = load_config(None, keys(tiny_model_dir, tmpfs(size="256m") / "run", max_steps=1))
    check_output_dir(roomy, Path(roomy.train.output_dir))
    run_stage(roomy)
    written = sum(p.stat().st_size for p in (Path(roomy.train.output_dir) / "checkpoint-1").rglob("*") if p.is_file())
    estimated = checkpoint_bytes(estimate_config(roomy, cuda_context=0.0)[0], "full")
    assert 0.5 < written / estimated < 2.0, (written, estimated)
    shutil.rmtree(roomy.train.output_dir)
    row.data_lost = 0
