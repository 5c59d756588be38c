"""The `tracelab` console script as a newcomer first meets it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tracelab
from tracelab.cli import COMMANDS

TRACELAB = Path(sys.executable).parent / "tracelab"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TRACELAB), *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command() -> None:
    done = _run("--help")
    assert done.returncode == 0
    for name in COMMANDS:
        assert name in done.stdout


def test_version() -> None:
    done = _run("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"tracelab {tracelab.__version__}")


def test_unknown_command_is_one_clear_error() -> None:
    done = _run("frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_command_prints_help_and_fails() -> None:
    done = _run()
    assert done.returncode == 2 and "usage: tracelab" in done.stdout


def test_python_dash_m_tracelab_cli_is_the_same_entry_point() -> None:
    """`python -m tracelab.cli` (what the tests and docker images run) works like the script."""
    done = subprocess.run([sys.executable, "-m", "tracelab.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"tracelab {tracelab.__version__}")
