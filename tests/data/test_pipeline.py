"""The data pipeline as a whole: validation split, parallel workers, tokenized_path, cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kubetune.config import load_config
from kubetune.data.pipeline import split_validation, tokenized
from kubetune.data.registry import DataError
from kubetune.data.schema import Message, Sample
from kubetune.data.template_registry import get_template

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def _data_args(**keys):
    return load_config(None, {"model_name_or_path": "x", "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"),
                              "template": "chatml", "cutoff_len": 96, **keys}).data


def _build(tokenizer, **keys):
    data = _data_args(**keys)
    template = get_template("chatml", tokenizer)
    return tokenized(data, tokenizer, template, stage="sft", seed=7, train=True, evaluate=data.val_size > 0)


def test_validation_split_is_deterministic_under_seed() -> None:
    samples = [Sample(prompt=[Message("user", str(i))], response=[Message("assistant", "a")], row=i)
               for i in range(50)]
    train_a, val_a = split_validation(samples, 0.2, seed=1)
    train_b, val_b = split_validation(samples, 0.2, seed=1)
    _, val_c = split_validation(samples, 0.2, seed=2)
    assert [s.row for s in val_a] == [s.row for s in val_b] and len(val_a) == 10
    assert {s.row for s in val_a} != {s.row for s in val_c}
    assert {s.row for s in train_a}.isdisjoint(s.row for s in val_a)
    assert len(split_validation(samples, 5, seed=1)[1]) == 5  # a count, not a fraction
    with pytest.raises(DataError, match="leaves no training rows"):
        split_validation(samples, 50, seed=1)


def test_parallel_workers_give_identical_rows(tokenizer, cache_dir: Path) -> None:
    """Worker processes encode whole preprocessing batches, so packing sees the batches one process would. With
    workers the batches lie within contiguous shards, as in LLaMA-Factory (`dataset_rows.preprocessing_batches`):
    64 rows in 2 shards of 32, batched by 8, are the same 8 batches as one process makes."""
    serial = _build(tokenizer, max_samples=64, preprocessing_batch_size=8, neat_packing=True)
    parallel = _build(tokenizer, max_samples=64, preprocessing_batch_size=8, neat_packing=True,
                      preprocessing_num_workers=2, overwrite_cache=True)
    assert serial.train["input_ids"] == parallel.train["input_ids"]
    assert serial.train["labels"] == parallel.train["labels"]
    assert serial.train["position_ids"] == parallel.train["position_ids"]


def test_cache_hit_and_val_split(tokenizer, cache_dir: Path) -> None:
    first = _build(tokenizer, max_samples=40, val_size=0.25, packing=False)
    again = _build(tokenizer, max_samples=40, val_size=0.25, packing=False)
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert len(first.train) == 30 and len(first.eval) == 10
    assert {"prompt_ids", "reference"} <= set(first.eval.column_names)
    assert again.train["input_ids"] == first.train["input_ids"]


def test_sft_rows_stay_one_example_each_by_default_and_pt_packs(tokenizer, cache_dir: Path) -> None:
    """As in LLaMA-Factory: sft keeps one example per row unless asked (a config keeps its examples per
    step); neat_packing packs them, each example seeing only itself; pt packs plainly by default."""
    plain = _build(tokenizer, max_samples=40, val_size=0.25)
    assert len(plain.train) == 30 and "position_ids" not in plain.train.column_names
    packed = _build(tokenizer, max_samples=40, val_size=0.25, neat_packing=True)
    assert len(packed.train) < 30 and len(packed.eval) == 10
    starts = sum(positions.count(0) for positions in packed.train["position_ids"])
    assert starts == 30  # every training example is in a row, once
    pt_data = _data_args(max_samples=40, dataset="kubi_pt")
    pt = tokenized(pt_data, tokenizer, get_template("chatml", tokenizer), stage="pt", seed=7)
    assert len(pt.train) < 40 and "position_ids" not in pt.train.column_names  # plain packing


def test_tokenized_path_saves_then_loads(tokenizer, cache_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "tok"
    built = _build(tokenizer, max_samples=12, tokenized_path=str(target))
    assert (target / "meta.json").is_file() and not built.cache_hit
    loaded = _build(tokenizer, max_samples=12, tokenized_path=str(target))
    assert loaded.cache_hit and loaded.train["input_ids"] == built.train["input_ids"]


def test_tokenized_path_built_from_other_inputs_is_refused_with_the_fix(tokenizer, cache_dir: Path,
                                                                        tmp_path: Path) -> None:
    target = tmp_path / "tok"
    _build(tokenizer, max_samples=12, tokenized_path=str(target))
    with pytest.raises(DataError, match=r"tokenized_path .*tok holds tokenised data built from other inputs(?s:.*)"
                                        r"Delete the folder or set overwrite_cache: true"):
        _build(tokenizer, max_samples=12, cutoff_len=64, tokenized_path=str(target))
    rebuilt = _build(tokenizer, max_samples=12, cutoff_len=64, tokenized_path=str(target), overwrite_cache=True)
    assert not rebuilt.cache_hit
    assert _build(tokenizer, max_samples=12, cutoff_len=64, tokenized_path=str(target)).cache_hit


def test_tokenized_path_is_used_whichever_splits_the_caller_asks_for(tokenizer, cache_dir: Path,
                                                                     tmp_path: Path) -> None:
    """The pipeline's train step asks for an eval split for do_predict, which its preprocess step may not
    build: the stored rows are the same tokens, so they are used as they are (as before)."""
    target = tmp_path / "tok"
    built = _build(tokenizer, max_samples=12, tokenized_path=str(target))
    data = _data_args(max_samples=12, tokenized_path=str(target))
    loaded = tokenized(data, tokenizer, get_template("chatml", tokenizer), stage="sft", seed=7, train=True,
                       evaluate=True)
    assert loaded.cache_hit and loaded.key == built.key and loaded.eval is None


def test_neat_packing_rows_fill_the_cutoff_less_one(tokenizer, cache_dir: Path) -> None:
    packed = _build(tokenizer, max_samples=40, neat_packing=True, cutoff_len=256)
    assert len(packed.train) < 40
    assert max(len(ids) for ids in packed.train["input_ids"]) <= 255  # LLaMA-Factory packs into cutoff_len - 1
    assert "position_ids" in packed.train.column_names


def _pt(tokenizer, **keys):
    data = _data_args(dataset="kubi_pt", **keys)
    return tokenized(data, tokenizer, get_template("chatml", tokenizer), stage="pt", seed=7).train


def test_pt_keeps_every_token_but_each_preprocessing_batchs_remainder(tokenizer, cache_dir: Path) -> None:
    """As LLaMA-Factory: documents (each ending with EOS) are concatenated per preprocessing batch and cut
    into cutoff_len blocks; only each batch's remainder, shorter than a block, is dropped."""
    whole = [len(ids) for ids in _pt(tokenizer, packing=False, cutoff_len=4096)["input_ids"]]
    assert all(ids[-1] == tokenizer.eos_token_id for ids in _pt(tokenizer, packing=False, cutoff_len=4096)["input_ids"])
    for batch_size in (1000, 64):
        blocks = _pt(tokenizer, cutoff_len=32, preprocessing_batch_size=batch_size)["input_ids"]
        per_batch = [sum(whole[i:i + batch_size]) for i in range(0, len(whole), batch_size)]
        assert all(len(b) == 32 for b in blocks)
        assert sum(map(len, blocks)) == sum(n - n % 32 for n in per_batch)
    explicit = _pt(tokenizer, cutoff_len=32, packing=True)["input_ids"]
    assert {len(b) for b in explicit} == {31}  # an explicit packing: true takes one off, as in LF
    cut = _pt(tokenizer, cutoff_len=8, packing=False)["input_ids"]
    assert [len(ids) for ids in cut] == [min(n, 8) for n in whole]  # packing: false cuts each document


def test_kto_pairs_each_prompt_with_the_previous_rows_response(tokenizer, cache_dir: Path) -> None:
    data = _data_args(dataset="kubi_kto", cutoff_len=512, preprocessing_batch_size=16)
    rows = tokenized(data, tokenizer, get_template("chatml", tokenizer), stage="kto", seed=7).train
    answers = [[t for t in labels if t != -100] for labels in rows["labels"]]
    partners = [[t for t in labels if t != -100] for labels in rows["kl_labels"]]
    assert len(rows) > 16
    for i in range(len(rows)):
        first = i - i % 16  # the batch's first row takes the batch's last row's response
        previous = min(first + 15, len(rows) - 1) if i == first else i - 1
        assert partners[i] == answers[previous], i


ROW_FORMS = {
    "sft eval": [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "prompt_ids": [1], "reference": "two"},
                 {"input_ids": [4], "labels": [4], "prompt_ids": [], "reference": ""}],
    "packed": [{"input_ids": [1, 2], "labels": [1, 2], "position_ids": [0, 1]}],
    "pairwise": [{"chosen_input_ids": [1, 2], "chosen_labels": [-100, 2], "rejected_input_ids": [1, 3],
                  "rejected_labels": [-100, 3]}],
    "kto": [{"kto_tag": True, "input_ids": [1, 2], "labels": [-100, 2], "kl_input_ids": [1, 5],
             "kl_labels": [-100, 5]}, {"kto_tag": False, "input_ids": [7], "labels": [7]}],
    "ppo": [{"input_ids": [1, 2], "reference": "an answer"}],
}


@pytest.mark.parametrize("form", ROW_FORMS)
def test_cached_rows_have_the_columns_and_types_of_from_list(form: str, tmp_path: Path) -> None:
    """The shard writer's folder reads back as `from_list(rows).save_to_disk` would: columns, types, rows,
    dataset_info.json; its state.json has save_to_disk's keys (a chunk per shard)."""
    import json

    import datasets

    from kubetune.data.arrow_shards import ShardWriter

    rows = ROW_FORMS[form]
    writer = ShardWriter(tmp_path / "ours", fingerprint="0123abcd")
    writer.write(rows[:1])
    writer.write(rows[1:])
    assert writer.close() == len(rows)
    reference = datasets.Dataset.from_list(rows)
    reference.save_to_disk(str(tmp_path / "reference"))
    ours = datasets.load_from_disk(str(tmp_path / "ours"))
    assert ours.features == reference.features and ours.to_list() == reference.to_list()
    info = [(tmp_path / name / "dataset_info.json").read_text() for name in ("ours", "reference")]
    assert info[0] == info[1]
    states = [json.loads((tmp_path / name / "state.json").read_text()) for name in ("ours", "reference")]
    assert states[0].keys() == states[1].keys() and states[0]["_fingerprint"] == "0123abcd"
    assert {k: v for k, v in states[0].items() if k not in ("_fingerprint", "_data_files")} == {
        k: v for k, v in states[1].items() if k not in ("_fingerprint", "_data_files")}


def test_shards_roll_over_and_a_null_typed_chunk_is_cast_to_the_shared_type(tmp_path: Path) -> None:
    import datasets

    from kubetune.data.arrow_shards import ShardWriter

    rows = [{"input_ids": [1, 2], "labels": [-100, 2], "reference": None},
            {"input_ids": [3], "labels": [3], "reference": "three"},
            {"input_ids": [4, 5, 6], "labels": [4, 5, 6], "reference": "four"}]
    writer = ShardWriter(tmp_path / "split", fingerprint="f", shard_bytes=1)  # every chunk its own shard
    for row in rows:
        writer.write([row])
    assert writer.close() == 3
    assert len(list((tmp_path / "split").glob("data-*-of-00003.arrow"))) == 3
    loaded = datasets.load_from_disk(str(tmp_path / "split"))
    assert loaded.to_list() == datasets.Dataset.from_list(rows).to_list()
    assert loaded.features == datasets.Dataset.from_list(rows).features


def test_rows_are_encoded_and_written_chunk_by_chunk_with_the_same_result(tokenizer, cache_dir: Path) -> None:
    """Chunks of one preprocessing batch each (7 samples here) give the rows one chunk gives."""
    whole = _build(tokenizer, max_samples=40, val_size=0.25)
    chunked = _build(tokenizer, max_samples=40, val_size=0.25, preprocessing_batch_size=7, overwrite_cache=True)
    assert chunked.key == whole.key and not chunked.cache_hit  # the batch size is no part of the tokens
    entry = cache_dir / "tokenized" / chunked.key
    assert len(list((entry / "train").glob("data-*.arrow"))) == 1  # chunks share a shard file
    for split in ("train", "eval"):
        assert getattr(chunked, split).to_list() == getattr(whole, split).to_list()


def test_num_samples_repeats_rows_to_reach_it_and_max_samples_then_caps_it(tokenizer, cache_dir: Path,
                                                                          tmp_path: Path) -> None:
    """As in LLaMA-Factory: an entry's num_samples above its row count upsamples it (every row, then repeats);
    max_samples truncates what num_samples gave."""
    import json

    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(3)]
    (tmp_path / "three.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"three": {"file_name": "three.json",
                                                                      "num_samples": 8}}))

    def build(**keys):
        data = load_config(None, {"model_name_or_path": "x", "dataset": "three", "dataset_dir": str(tmp_path),
                                  "template": "chatml", "packing": False, **keys}).data
        return tokenized(data, tokenizer, get_template("chatml", tokenizer), stage="sft", seed=7).train

    upsampled = [tokenizer.decode(ids) for ids in build()["input_ids"]]
    assert len(upsampled) == 8 and len(set(upsampled)) == 3
    assert len(build(max_samples=5)) == 5 and len(build(max_samples=50)) == 8
