"""Export (merge), the command line, chat, and loading models and data from s3:// (real moto_server)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from kubetune.cli import main
from kubetune.config import load_config
from kubetune.export import export
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapter")
    cfg = load_config(None, {
        "model_name_or_path": str(tiny_model_dir), "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"),
        "template": "chatml", "cutoff_len": 48, "max_samples": 8, "output_dir": str(out), "max_steps": 3,
        "learning_rate": 5e-2, "lora_rank": 4, "overwrite_output_dir": True, "disable_tqdm": True,
    })
    run_stage(cfg)
    return out


def test_merged_model_equals_base_plus_adapter(tiny_model_dir: Path, trained_adapter: Path, tmp_path: Path) -> None:
    target = tmp_path / "merged"
    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": str(trained_adapter),
                             "export_dir": str(target)})
    export(cfg)
    assert list(target.glob("*.safetensors")) and (target / "tokenizer.json").is_file()
    ids = torch.randint(0, 1000, (2, 12))
    merged = AutoModelForCausalLM.from_pretrained(target).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(base, trained_adapter).eval()
    with torch.no_grad():
        expected = with_adapter(ids).logits
        got = merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
    assert not torch.allclose(plain, expected, atol=1e-4), "the adapter must change the logits"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_legacy_format_writes_bin(tiny_model_dir: Path, trained_adapter: Path, tmp_path: Path) -> None:
    target = tmp_path / "legacy"
    export(load_config(None, {"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": str(trained_adapter),
                              "export_dir": str(target), "export_legacy_format": True}))
    assert (target / "pytorch_model.bin").is_file() and not list(target.glob("*.safetensors"))
    assert AutoModelForCausalLM.from_pretrained(target) is not None


def test_cli_reports_every_problem_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(REPO / "examples/sft_lora.yaml"), "lora_rank=abc", "--lerning_rate", "1e-4"])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 problems" in err and "did you mean 'learning_rate'" in err and "lora_rank" in err


@pytest.mark.parametrize("name", ["sft_lora", "sft_qlora", "sft_full", "sft_freeze"])
def test_examples_validate(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert main(["validate", f"examples/{name}.yaml", f"output_dir={tmp_path / 'o'}"]) == 0, capsys.readouterr().err


def test_cli_train_then_eval(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out, ev = tmp_path / "train", tmp_path / "eval"
    common = [f"model_name_or_path={tiny_model_dir}", f"dataset_dir={REPO / 'data'}", "max_samples=8",
              "cutoff_len=48", "disable_tqdm=true"]
    assert main(["train", str(REPO / "examples/sft_lora.yaml"), *common, f"output_dir={out}", "max_steps=2"]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    assert main(["eval", str(REPO / "examples/sft_lora.yaml"), *common, f"adapter_name_or_path={out}",
                 f"output_dir={ev}", "max_new_tokens=4"]) == 0
    summary = json.loads((ev / "run_summary.json").read_text())
    assert {"eval_loss", "eval_perplexity", "predict_bleu-4", "predict_rouge-l"} <= summary["metrics"].keys()
    assert not (ev / "adapter_model.safetensors").exists(), "eval must not train"


def test_chat_answers_and_obeys_commands(tiny_model_dir: Path, trained_adapter: Path) -> None:
    from kubetune.chat import chat

    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": str(trained_adapter),
                             "template": "chatml", "max_new_tokens": 3, "do_sample": False})
    out = io.StringIO()
    chat(cfg, stdin=io.StringIO("hello\nclear\nhi again\nexit\n"), stdout=out)
    text = out.getvalue()
    assert text.count("Assistant:") == 2 and "History cleared." in text


@pytest.mark.s3
def test_model_and_dataset_from_s3(tiny_model_dir: Path, bucket: str, tmp_path: Path) -> None:
    from kubetune.storage import upload_dir, upload_file

    upload_dir(tiny_model_dir, f"s3://{bucket}/models/tiny")
    upload_file(REPO / "data/kubi_sft_eval.json", f"s3://{bucket}/data/sft.json")
    out = tmp_path / "run"
    result = run_stage(load_config(None, {
        "model_name_or_path": f"s3://{bucket}/models/tiny", "dataset": f"s3://{bucket}/data/sft.json",
        "template": "chatml", "cutoff_len": 48, "output_dir": str(out), "max_steps": 2, "disable_tqdm": True,
    }))
    assert (out / "adapter_model.safetensors").is_file()
    assert result.metrics["train_loss"] > 0
