"""The command line: `kubetune <command> --help` prints the usage (it was read as a config key named `help`);
`kubetune validate` checks a pipeline config as a pipeline (it was read as one stage's config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["train", "eval", "export", "chat", "validate"])
@pytest.mark.parametrize("after", [[], ["examples/sft_lora.yaml"], ["examples/sft_lora.yaml", "lora_rank=4"]])
def test_help_after_a_command_prints_the_usage(command: str, after: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, *after, "--help"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("kubetune <command>") and "unknown key" not in out.err


def test_an_unknown_command_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian", "x.yaml"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_validate_checks_a_pipeline_config_as_a_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load((REPO / "examples/pipeline_dpo.yaml").read_text())
    data["dataset_dir"] = str(REPO / "data")
    good = tmp_path / "dpo.yaml"
    good.write_text(yaml.safe_dump(data))
    assert main(["validate", str(good)]) == 0
    assert "OK — pipeline dpo (kubi-dpo): sft, rm, dpo, then evaluate" in capsys.readouterr().out
    data["stages"]["rm"]["dataset"] = "kubi_sft"  # not ranked pairs: the rm step would fail after sft trained
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["validate", str(bad)]) == 2
    assert "stages.rm: dataset" in capsys.readouterr().err


def test_validate_refuses_overrides_on_a_pipeline_config(capsys: pytest.CaptureFixture[str]) -> None:
    """`kubetune run` takes no key=value overrides, so validate must not check another config than run would run
    (it used to fall back to reading the pipeline file as one stage's config)."""
    assert main(["validate", str(REPO / "examples/pipeline_dpo.yaml"), "learning_rate=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "is a pipeline config, which takes no key=value overrides (got learning_rate=1e-3)" in err
    assert "stages.<stage>" in err
