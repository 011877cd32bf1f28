"""Speed settings: bf16 where the device computes it natively and padding-free batches (the defaults),
length-grouped batches and neat packing (opt-in: they change what a batch holds). bench/ measures what
they are worth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from kubetune.config import ConfigError, load_config
from kubetune.model import auto_precision, packed_attention
from kubetune.model.auto_precision import native_bf16, with_bf16_decided
from kubetune.stages import run_stage
from kubetune.train.arguments import groups_by_length

REPO = Path(__file__).resolve().parents[2]


def cfg(**keys):
    base = {"model_name_or_path": "x", "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "output_dir": "o"}
    return load_config(None, {**base, **keys})


class BatchRecorder(TrainerCallback):
    """Records the training precision, the attention implementation, the logged losses and, per forward,
    the batch's keys, rows, computed positions and padded positions."""

    def __init__(self) -> None:
        self.bf16: bool | None = None
        self.attention: str | None = None
        self.batches: list[dict] = []
        self.losses: list[float] = []

    def _record(self, module, args, kwargs) -> None:  # noqa: ANN001
        if module.training:
            mask = kwargs.get("attention_mask")
            self.batches.append({"keys": {k for k, v in kwargs.items() if v is not None},
                                 "padding": 0 if mask is None else int((mask == 0).sum()),
                                 "positions": kwargs["input_ids"].numel(),
                                 "rows": kwargs["input_ids"].shape[0],
                                 "autocast": torch.is_autocast_enabled("cpu")})

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.bf16 = args.bf16
        self.attention = model.get_base_model().config._attn_implementation
        model.get_base_model().model.register_forward_pre_hook(self._record, with_kwargs=True)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def tiny_run(model_dir: Path, out: Path, **keys) -> BatchRecorder:
    base = {"model_name_or_path": str(model_dir), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
            "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 128,
            "max_samples": 32, "output_dir": str(out), "per_device_train_batch_size": 4, "max_steps": 4,
            "report_to": "none", "disable_tqdm": True, "save_strategy": "no", "logging_steps": 1}
    recorder = BatchRecorder()
    run_stage(load_config(None, {**base, **keys}), callbacks=[recorder])
    return recorder


def test_default_sft_picks_bf16_by_device_and_batches_without_padding(tiny_model_dir: Path, tmp_path: Path,
                                                                       cache_dir: Path) -> None:
    recorder = tiny_run(tiny_model_dir, tmp_path / "run")
    native, _ = native_bf16()
    assert recorder.bf16 is native  # on where bf16 is native (AMX CPUs, Ampere+ GPUs), off elsewhere
    assert all(b["autocast"] is native for b in recorder.batches)
    assert all("position_ids" in b["keys"] and "attention_mask" not in b["keys"] for b in recorder.batches)
    padded = tiny_run(tiny_model_dir, tmp_path / "padded", packing=False)
    assert all("attention_mask" in b["keys"] and "position_ids" not in b["keys"] for b in padded.batches)


def mixed_length_dataset(folder: Path) -> dict:
    """Alpaca rows, most answers short and some long, as in real instruction data."""
    folder.mkdir(parents=True)
    rows = [{"instruction": f"Say something about item {i}.", "input": "",
             "output": " ".join(["word"] * (60 if i % 3 == 0 else 2 + i % 5))} for i in range(48)]
    (folder / "mixed.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"mixed": {"file_name": "mixed.json"}}))
    return {"dataset": "mixed", "dataset_dir": str(folder)}


def test_padding_free_batches_train_as_padded_ones_on_fewer_positions(tiny_model_dir: Path, tmp_path: Path,
                                                                      cache_dir: Path) -> None:
    common = {"bf16": False, "max_steps": 6, **mixed_length_dataset(tmp_path / "data")}
    free = tiny_run(tiny_model_dir, tmp_path / "free", **common)
    padded = tiny_run(tiny_model_dir, tmp_path / "padded", packing=False, **common)
    assert len(free.losses) == len(padded.losses) == 6
    assert free.losses == pytest.approx(padded.losses, rel=1e-4)  # same examples per step, same loss
    assert free.losses[-1] != free.losses[0]  # and it trains
    assert sum(b["positions"] for b in free.batches) < 0.8 * sum(b["positions"] for b in padded.batches)


def test_padding_free_batches_are_one_row_under_sdpa_per_sequence_and_neat_rows_keep_the_block_mask(
        tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    free = tiny_run(tiny_model_dir, tmp_path / "free", bf16=False, max_steps=2)
    assert free.attention == packed_attention.NAME
    assert all(b["rows"] == 1 for b in free.batches)
    # neat-packed rows are cutoff-long: the block mask over them was faster and smaller (bench, measured)
    neat = tiny_run(tiny_model_dir, tmp_path / "neat", bf16=False, max_steps=2, neat_packing=True)
    assert neat.attention == "sdpa"
    assert all(b["rows"] > 1 and "position_ids" in b["keys"] for b in neat.batches)


def test_unpacked_rows_are_batched_by_length(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    # padded batches, so that the padding grouping saves shows in the attention masks
    common = {"bf16": False, "max_steps": 8, "per_device_train_batch_size": 2, "packing": False}
    grouped = tiny_run(tiny_model_dir, tmp_path / "grouped", group_by_length=True, **common)
    shuffled = tiny_run(tiny_model_dir, tmp_path / "shuffled", **common)  # not grouped: the default
    assert all("attention_mask" in b["keys"] for b in grouped.batches)
    padded, unsorted = sum(b["padding"] for b in grouped.batches), sum(b["padding"] for b in shuffled.batches)
    # on kubi_sft's first rows (max_samples keeps the file's order): 26 padding positions grouped, 47 shuffled
    assert padded < 0.7 * unsorted, (padded, unsorted)


def test_length_grouping_applies_to_unpacked_sft_and_pt_rows_only() -> None:
    assert groups_by_length(cfg()) is False  # opt-in
    assert groups_by_length(cfg(group_by_length=True)) is True
    assert groups_by_length(cfg(group_by_length=True, neat_packing=True)) is False  # packed: no padding to save
    assert groups_by_length(cfg(stage="pt", dataset="kubi_pt", group_by_length=True)) is False  # pt packs
    assert groups_by_length(cfg(stage="pt", packing=False, dataset="kubi_pt", group_by_length=True)) is True
    with pytest.raises(ConfigError, match="group_by_length"):
        cfg(stage="dpo", dataset="kubi_pref", group_by_length=True)


@pytest.mark.parametrize(("keys", "native", "expected"), [
    ({}, True, True), ({}, False, False),
    ({"bf16": False}, True, False), ({"bf16": True}, False, True),
    ({"fp16": True}, True, False), ({"pure_bf16": True}, True, False),
])
def test_bf16_auto_follows_the_device_unless_set(monkeypatch: pytest.MonkeyPatch, keys: dict, native: bool,
                                                 expected: bool) -> None:
    monkeypatch.setattr(auto_precision, "native_bf16", lambda: (native, "test"))
    config = cfg(**keys)
    assert with_bf16_decided(config).train.bf16 is expected
    assert config.train.bf16 == keys.get("bf16")  # the caller's config is left as it was


def test_bf16_true_where_it_would_be_emulated_is_kept_and_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(auto_precision, "native_bf16", lambda: (False, "the CPU has no AMX"))
    assert with_bf16_decided(cfg(bf16=True)).train.bf16 is True
    assert "bf16: true, but the CPU has no AMX" in caplog.text
    caplog.clear()
    monkeypatch.setattr(auto_precision, "native_bf16", lambda: (True, "AMX"))
    with_bf16_decided(cfg(bf16=True))
    assert "bf16: true, but" not in caplog.text


def test_native_bf16_on_cpu_means_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16()[0] is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16()[0] is True
