"""Stale KFP cache hits: the preprocess step's cache key, read from the compiled pipeline YAML, must change when
anything that changes its tokens changes — a custom `template_file`'s bytes, the tokenizer's files, the kubetune
version — or a cluster reuses tokens made with the old inputs.

Issue 18 measured the old second hash (in `pipelines/placement.py`) staying `8f592cad…` across an edit of the
template file. The key is now one hash: `kubetune.data.stage_key.preprocess_cache_key`, the data pipeline's own
`cache_key.data_key` computed at compile time and set as the task's KFP cache key. Each case compiles the real
pipeline twice, around the edit, and counts a stale key as one lost row of data (a reused stale dataset).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import kubetune
from kubetune.config.pipeline import load_pipeline_config
from kubetune.launch.local_run import compile_pipeline

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = """\
format_user: "<|im_start|>user\\n{{content}}<|im_end|>\\n"
format_generation: "<|im_start|>assistant\\n"
format_assistant: "{{content}}<|im_end|>\\n"
stop_words: ["<|im_end|>"]
replace_eos: true
"""


def compiled_preprocess_key(config: dict, out: Path) -> str:
    """Compile the pipeline and read the preprocess task's `cachingOptions.cacheKey` from the YAML."""
    cfg = load_pipeline_config(text=yaml.safe_dump(config))
    spec = next(iter(yaml.safe_load_all(compile_pipeline(cfg, out).read_text())))
    body = spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    task = spec["components"][body]["dag"]["tasks"]["preprocess"]
    assert task["cachingOptions"].get("enableCache", True) is not False
    return task["cachingOptions"]["cacheKey"]


def pipeline(model_dir: Path, **shared: object) -> dict:
    return {
        "name": "tiny", "pipeline": "sft", "model_name_or_path": str(model_dir), "lora_rank": 4,
        "template": "chatml", "dataset_dir": str(REPO / "data"), "cutoff_len": 48, "max_samples": 16,
        "disable_tqdm": True, **shared,
        "stages": {"sft": {"dataset": "kubi_sft", "max_steps": 2, "per_device_train_batch_size": 4}},
        "evaluation": {"eval_dataset": "kubi_sft_eval"}, "promotion": {"metric": "eval_loss"},
    }


def edit_template(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Callable[[], None]]:
    template_file = tmp_path / "chat.yaml"
    template_file.write_text(TEMPLATE)

    def edit() -> None:  # one more newline after the assistant header: other tokens for every row
        template_file.write_text(TEMPLATE.replace("<|im_start|>assistant\\n", "<|im_start|>assistant\\n\\n"))

    return pipeline(model, template="custom", template_file=str(template_file)), edit


def edit_tokenizer(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Callable[[], None]]:
    def edit() -> None:  # the tokenizer's files rewritten with one more token, under the same model path
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        tokenizer.add_tokens(["<|kubetune_chaos|>"])
        tokenizer.save_pretrained(model)

    return pipeline(model), edit


def new_version(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Callable[[], None]]:
    return pipeline(model), lambda: monkeypatch.setattr(kubetune, "__version__", kubetune.__version__ + ".post1")


@pytest.mark.chaos
@pytest.mark.parametrize("change", [edit_template, edit_tokenizer, new_version], ids=lambda f: f.__name__)
def test_the_compiled_preprocess_cache_key_changes_with_what_changes_the_tokens(
        chaos_row, change: Callable, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row = chaos_row(f"stale KFP cache key: {change.__name__.replace('_', ' ')}")
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))  # a private copy: its tokenizer may change
    config, edit = change(tmp_path, model, monkeypatch)
    row.runs += 1
    before = compiled_preprocess_key(config, tmp_path / "before.yaml")
    assert compiled_preprocess_key(config, tmp_path / "again.yaml") == before  # stable while nothing changes
    edit()
    row.runs += 1
    after = compiled_preprocess_key(config, tmp_path / "after.yaml")
    row.data_lost = int(after == before)  # a stale key: the cluster would reuse the old tokens
    assert row.data_lost == 0, f"the preprocess cache key stayed {before[:8]}… across {change.__name__}"
