"""The command-line entry points a user types: `bertline`, `bertline prepare`, `python -m pipeline`."""

import subprocess
import sys

from bertline.cli import main


def test_bertline_without_arguments_lists_the_commands(capsys):
    assert main([]) == 0
    assert "prepare" in capsys.readouterr().out


def test_unknown_command_is_one_sentence(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_prepare_help_names_the_contract(capsys):
    try:
        main(["prepare", "--help"])
    except SystemExit as exit:
        assert exit.code == 0
    out = capsys.readouterr().out
    for flag in ("--input", "--output", "--config", "--overwrite"):
        assert flag in out


def test_python_dash_m_pipeline_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--output" in result.stdout


def test_missing_output_is_reported_by_argparse(capsys):
    try:
        main(["prepare"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "--output" in capsys.readouterr().err
