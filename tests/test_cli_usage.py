"""`kubetune <command> --help` prints the usage (it was read as a config key named `help`)."""

from __future__ import annotations

import pytest

from kubetune.cli import main


@pytest.mark.parametrize("command", ["train", "eval", "export", "chat", "validate"])
def test_help_after_a_command_prints_the_usage(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("kubetune <command>") and "unknown key" not in out.err


def test_an_unknown_command_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian", "x.yaml"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
