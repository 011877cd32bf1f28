"""The preprocess step's KFP cache key is the data pipeline's own cache key, computed at compile time.

A cached preprocess step on a cluster is reused exactly when the step would build the same rows:
a changed dataset, `template_file`, tokenizer or kubetune version gives a new key, and the key
compiled into the YAML is the one the step computes when it runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import kubetune
from kubetune.components import runtime
from kubetune.config.pipeline import load_pipeline_config
from kubetune.launch.local_run import compile_pipeline
from kubetune.pipelines.placement import preprocess_cache_key

REPO = Path(__file__).resolve().parents[2]

TEMPLATE = """\
format_user: "<|im_start|>user\\n{{content}}<|im_end|>\\n"
format_generation: "<|im_start|>assistant\\n"
format_assistant: "{{content}}<|im_end|>\\n"
stop_words: ["<|im_end|>"]
replace_eos: true
"""


def _config(model_dir: Path, **shared: object) -> dict:
    return {
        "name": "tiny", "pipeline": "sft", "model_name_or_path": str(model_dir), "lora_rank": 4,
        "template": "chatml", "dataset_dir": str(REPO / "data"), "cutoff_len": 48, "max_samples": 16,
        "disable_tqdm": True, **shared,
        "stages": {"sft": {"dataset": "kubi_sft", "max_steps": 2, "per_device_train_batch_size": 4}},
        "evaluation": {"eval_dataset": "kubi_sft_eval"}, "promotion": {"metric": "eval_loss"},
    }


def _key(data: dict) -> str:
    return preprocess_cache_key(load_pipeline_config(text=yaml.safe_dump(data)), "sft")


@pytest.fixture()
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model, whose tokenizer a test may change."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_editing_a_custom_template_file_changes_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    template_file = tmp_path / "chat.yaml"
    template_file.write_text(TEMPLATE)
    config = _config(tiny_model_dir, template="custom", template_file=str(template_file))
    before = _key(config)
    assert _key(config) == before
    template_file.write_text(TEMPLATE.replace("<|im_start|>assistant\\n", "<|im_start|>assistant\\n\\n"))
    assert _key(config) != before


def test_a_new_kubetune_version_changes_the_key(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _key(_config(tiny_model_dir))
    monkeypatch.setattr(kubetune, "__version__", kubetune.__version__ + ".post1")
    assert _key(_config(tiny_model_dir)) != before


def test_a_changed_tokenizer_changes_the_key(model_copy: Path) -> None:
    from transformers import AutoTokenizer

    before = _key(_config(model_copy))
    tokenizer = AutoTokenizer.from_pretrained(model_copy)
    tokenizer.add_tokens(["<|kubetune_test|>"])
    tokenizer.save_pretrained(model_copy)
    assert _key(_config(model_copy)) != before


def test_added_tokens_change_the_key_with_or_without_the_tokenizer(tiny_model_dir: Path) -> None:
    from kubetune.data.stage_key import CacheKeyWarning

    assert _key(_config(tiny_model_dir, add_special_tokens="<|kt|>")) != _key(_config(tiny_model_dir))
    with pytest.warns(CacheKeyWarning):  # a stand-in (no tokenizer to read) names the tokens
        offline = _key(_config(Path("nobody/no-such-model")))
    with pytest.warns(CacheKeyWarning):
        assert _key(_config(Path("nobody/no-such-model"), add_tokens="kt")) != offline


def test_the_compiled_key_is_the_key_the_step_computes(tiny_model_dir: Path, tmp_path: Path,
                                                       cache_dir: Path) -> None:
    config = _config(tiny_model_dir)
    cfg = load_pipeline_config(text=yaml.safe_dump(config))
    compiled = yaml.safe_load_all((compile_pipeline(cfg, tmp_path / "sft.yaml")).read_text())
    spec = next(iter(compiled))
    body = spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    cache_key = spec["components"][body]["dag"]["tasks"]["preprocess"]["cachingOptions"]["cacheKey"]

    ran = runtime.preprocess(cfg.to_param(), "sft", str(tmp_path / "dataset"))
    assert cache_key == preprocess_cache_key(cfg, "sft") == ran["content_hash"]


def test_what_compile_time_cannot_hash_it_names_with_a_warning(tiny_model_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.data.stage_key import CacheKeyWarning

    with pytest.warns(CacheKeyWarning, match="tokenizer's name \\(nobody/no-such-model, revision main\\)"):
        offline = _key(_config(Path("nobody/no-such-model")))
    with pytest.warns(CacheKeyWarning):
        assert _key(_config(Path("nobody/no-such-model"))) == offline  # a stand-in is still a stable key

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text('{"d": {"file_name": "d.json"}}')
    config = _config(tiny_model_dir, dataset_dir=str(data_dir))
    config["stages"]["sft"]["dataset"] = "d"
    config["evaluation"]["eval_dataset"] = "d"
    with pytest.warns(CacheKeyWarning, match="d.json"):
        _key(config)

    # the embedded model before its one-time conversion: named, not converted (that takes a minute)
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "empty-cache"))
    with pytest.warns(CacheKeyWarning, match="embedded model is not converted"):
        _key(_config(Path("HuggingFaceTB/SmolLM2-135M-Instruct")))
    assert not (tmp_path / "empty-cache" / "models").exists()


def test_the_preprocess_step_builds_the_eval_split_do_predict_reads() -> None:
    from kubetune.config import load_config
    from kubetune.data.stage_key import preprocess_splits

    base = {"model_name_or_path": "m", "stage": "sft", "dataset": "kubi_sft", "eval_dataset": "kubi_sft",
            "output_dir": "o"}
    assert preprocess_splits(load_config(None, base)) == (True, False)
    assert preprocess_splits(load_config(None, {**base, "do_predict": True})) == (True, True)
    assert preprocess_splits(load_config(None, {**base, "do_eval": True})) == (True, True)
