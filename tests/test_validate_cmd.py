"""`tracelab validate`: the real command, run as a user runs it, on real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parent.parent / "spec" / "examples"
VALID = sorted((SPEC / "valid").glob("*.json"))
INVALID = sorted((SPEC / "invalid").glob("*.json"))


def tracelab_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("tracelab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracelab.cli"]


def run(*args: str, stdin: bytes | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*tracelab_command(), "validate", *args], input=stdin, capture_output=True,
        cwd=cwd, timeout=60, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(), result.stderr.decode())


def event(**changes: object) -> dict:
    base = json.loads((SPEC / "valid" / "http-plain.json").read_text())
    base.update(changes)
    return base


def test_help_lists_validate() -> None:
    result = subprocess.run([*tracelab_command(), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert "validate" in result.stdout


def test_all_valid_examples_exit_0() -> None:
    result = run(*map(str, VALID))
    assert result.returncode == 0, result.stdout + result.stderr
    n = len(VALID)
    assert result.stdout == f"{n} events in {n} files: {n} valid, 0 invalid\n"
    assert result.stderr == ""


def test_every_invalid_example_is_reported_with_file_and_line() -> None:
    result = run(*map(str, INVALID))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == f"{len(INVALID)} events in {len(INVALID)} files: 0 valid, {len(INVALID)} invalid"
    assert len(lines) - 1 == len(INVALID)
    for path in INVALID:
        assert any(line.startswith(f"{path}:1: ") for line in lines), path.name


def test_invalid_lines_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(event(started_at="2024-05-01T10:00:00Z", status="success")))
    result = run(str(bad))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{bad}:1: started_at: expected an integer (epoch nanoseconds), got str; "
        "status: expected 'ok' or 'error', got 'success'",
        "1 event in 1 file: 0 valid, 1 invalid",
    ]


def test_json_lines_are_checked_line_by_line(tmp_path: Path) -> None:
    spool = tmp_path / "20240501T100000-4182-1a2b3c4d.jsonl"
    spool.write_text("\n".join([
        json.dumps(event()),
        "",
        json.dumps(event(event_id="e2", latency_ms=-1)),
        '{"event_id": "e3", "schema": 1,',  # a torn line
        json.dumps([event()]),
        json.dumps(event(event_id="e5")),
    ]) + "\n")
    result = run(str(spool))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{spool}:3: latency_ms: must be >= 0, got -1",
        f"{spool}:4: not valid JSON: Expecting property name enclosed in double quotes (column 32)",
        f"{spool}:5: event: expected a JSON object, got list",
        "5 events in 1 file: 2 valid, 3 invalid",
    ]


def test_valid_json_lines_exit_0(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    spool.write_text("".join(json.dumps(event(event_id=f"e{i}")) + "\n" for i in range(50)))
    result = run(str(spool))
    assert result.returncode == 0
    assert result.stdout == "50 events in 1 file: 50 valid, 0 invalid\n"


def test_a_broken_pretty_printed_file_is_one_error_at_its_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    text = json.dumps(event(), indent=2)
    broken.write_text(text.replace('"schema": 1,', '"schema": 1'))  # missing comma
    result = run(str(broken))
    assert result.returncode == 1
    first, summary = result.stdout.splitlines()
    assert first.startswith(f"{broken}:4: not valid JSON: Expecting ',' delimiter")
    assert summary == "1 event in 1 file: 0 valid, 1 invalid"


def test_bytes_that_are_not_utf8_are_invalid_not_a_crash(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(json.dumps(event()).encode() + b"\n\xff\xfe{not json\n")
    result = run(str(junk))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(f"{junk}:2: not valid JSON")
    assert "Traceback" not in result.stderr


def test_an_empty_file_has_no_events(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run(str(empty))
    assert result.returncode == 0
    assert result.stdout == "0 events in 1 file: 0 valid, 0 invalid\n"


def test_stdin_with_a_dash() -> None:
    result = run("-", stdin=(json.dumps(event(schema=2)) + "\n").encode())
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "<stdin>:1: schema: unsupported version 2, expected 1"


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_file_exits_2_with_one_line(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "nope.json"
    if kind == "directory":
        target.mkdir()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(event()))
    result = run(str(target), str(good))
    assert result.returncode == 2
    reason = "No such file or directory" if kind == "missing" else "Is a directory"
    assert result.stderr == f"tracelab validate: cannot read {target}: {reason}\n"
    # The readable file is still checked.
    assert result.stdout == "1 event in 1 file: 1 valid, 0 invalid, 1 file unreadable\n"


def test_quiet_prints_only_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(event()))
    assert run("-q", str(good)).stdout == ""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(event(status="nope")))
    result = run("--quiet", str(good), str(bad))
    assert result.returncode == 1
    assert result.stdout == f"{bad}:1: status: expected 'ok' or 'error', got 'nope'\n"


def test_no_files_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "FILE" in result.stderr
