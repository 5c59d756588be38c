"""`make demo` asks for only what the demo uses (no chromium, no redis-server: it records in
embedded mode); `make install` and `make test` still install everything. Read from make's own
dry run (`make -n`), which prints every command the goal would run, runs none."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(goal: str) -> str:
    make = shutil.which("make")
    assert make is not None, "make is not installed"
    # Run as a top-level make even under `make test`: no inherited MAKEFLAGS/MAKELEVEL, which
    # would add "Entering directory" lines and the parent's flags.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run([make, "--no-print-directory", "-n", goal], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def apt_checks(output: str) -> list[list[str]]:
    """The `command:package` pairs the system-package step checks."""
    return [line.split("for pair in ", 1)[1].split(";", 1)[0].split()
            for line in output.splitlines() if "for pair in " in line] or [[]]


def test_make_demo_needs_neither_chromium_nor_redis() -> None:
    output = dry_run("demo")
    assert apt_checks(output) == [["npm:nodejs,npm"]]
    assert "chromium" not in output and "redis-server" not in output
    assert output.rstrip().endswith("tracelab demo")


@pytest.mark.parametrize("goal", ["install", "test"])
def test_make_install_and_test_still_install_everything(goal: str) -> None:
    assert apt_checks(dry_run(goal)) == [["redis-server:redis-server", "npm:nodejs,npm",
                                          "chromium:chromium", "curl:curl"]]
