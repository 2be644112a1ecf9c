"""The `jaxtok` command: version, help and one-line errors for bad arguments."""

import subprocess
import sys

import pytest

import jaxtok
from jaxtok import cli


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--version"])
  assert e.value.code == 0
  assert capsys.readouterr().out.strip() == f"jaxtok {jaxtok.__version__}"


def test_no_command_prints_help(capsys):
  assert cli.main([]) == 0
  assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--steps", "0"], "--steps must be >= 1; got 0"),
    (["demo", "--batch-size", "-2"], "--batch-size must be >= 1; got -2"),
    (["demo", "--steps", "many"], "invalid int value: 'many'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def test_console_script_entry_point():
  out = subprocess.run([sys.executable, "-m", "jaxtok.cli", "--help"], capture_output=True,
                       text=True, check=True).stdout
  assert out.startswith("usage: jaxtok")
