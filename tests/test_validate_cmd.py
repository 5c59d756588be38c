"""`tracelab validate`: the real command on real files, in a subprocess as a user runs it, or
through `tracelab.cli.main` in process where many cases would each pay the start-up."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SPEC = Path(__file__).resolve().parent.parent / "spec" / "examples"
VALID = sorted((SPEC / "valid").glob("*.json"))
INVALID = sorted((SPEC / "invalid").glob("*.json"))


def tracelab_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("tracelab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tracelab.cli"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """`tracelab validate ARGS` as a user runs it: the installed script in a subprocess."""
    result = subprocess.run(
        [*tracelab_command(), "validate", *args], input=stdin, capture_output=True,
        timeout=60, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(), result.stderr.decode())


def check(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command through `tracelab.cli.main` in this process: the same code and output
    without paying the interpreter's start-up (and jsonschema's import) on every case."""
    from tracelab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["validate", *args])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(["tracelab", "validate", *args], code, out.getvalue(),
                                       err.getvalue())


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
    # A file holding a JSON array is a list of events (not-an-object.json holds one valid
    # event in an array, so as a file it is valid: see test_a_json_array_is_a_list_of_events).
    objects = [p for p in INVALID if not p.read_text().lstrip().startswith("[")]
    assert len(objects) == len(INVALID) - 1
    result = check(*map(str, objects))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    n = len(objects)
    assert lines[-1] == f"{n} events in {n} files: 0 valid, {n} invalid"
    assert len(lines) - 1 == n
    for path in objects:
        assert any(line.startswith(f"{path}:1: ") for line in lines), path.name


def test_invalid_lines_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(event(started_at="2024-05-01T10:00:00Z", status="success")))
    result = check(str(bad))
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
    result = check(str(spool))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{spool}:3: latency_ms: must be >= 0, got -1",
        f"{spool}:4: not valid JSON: unexpected end of data (column 32)",
        f"{spool}:5: event: expected a JSON object, got list",
        "5 events in 1 file: 2 valid, 3 invalid",
    ]


def test_valid_json_lines_exit_0(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    spool.write_text("".join(json.dumps(event(event_id=f"e{i}")) + "\n" for i in range(50)))
    result = check(str(spool))
    assert result.returncode == 0
    assert result.stdout == "50 events in 1 file: 50 valid, 0 invalid\n"


def test_a_broken_pretty_printed_file_is_one_error_at_its_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    text = json.dumps(event(), indent=2)
    broken.write_text(text.replace('"schema": 1,', '"schema": 1'))  # missing comma
    result = check(str(broken))
    assert result.returncode == 1
    first, summary = result.stdout.splitlines()
    assert first == (f"{broken}:4: not valid JSON: unexpected character, expected ',' or '}}' "
                     "(column 3)")
    assert summary == "1 event in 1 file: 0 valid, 1 invalid"


def test_bytes_that_are_not_utf8_are_invalid_not_a_crash(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(json.dumps(event()).encode() + b"\n\xff\xfe{not json\n")
    result = run(str(junk))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == f"{junk}:2: not valid JSON: the bytes are not UTF-8 (byte 1)"
    assert "Traceback" not in result.stderr


def test_an_empty_file_has_no_events(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = check(str(empty))
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
    result = check(str(target), str(good))
    assert result.returncode == 2
    reason = "No such file or directory" if kind == "missing" else "Is a directory"
    assert result.stderr == f"tracelab validate: cannot read {target}: {reason}\n"
    # The readable file is still checked.
    assert result.stdout == "1 event in 1 file: 1 valid, 0 invalid, 1 file unreadable\n"


def test_quiet_prints_only_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(event()))
    assert check("-q", str(good)).stdout == ""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(event(status="nope")))
    result = check("--quiet", str(good), str(bad))
    assert result.returncode == 1
    assert result.stdout == f"{bad}:1: status: expected 'ok' or 'error', got 'nope'\n"


def test_no_files_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "FILE" in result.stderr


# -- parsed as the ingester parses (orjson), checked against the JSON Schema too ------------

REFUSED = [  # Python's json module takes all of these; the ingester (orjson) dead-letters them
    ("NaN", "NaN is not a JSON number (column"),
    ("Infinity", "Infinity is not a JSON number (column"),
    ("-Infinity", "-Infinity is not a JSON number (column"),
    ('"\\ud800"', "a lone surrogate escape is not Unicode text (no low surrogate in string"),
    ("1e400", "number is infinity when parsed as double (column"),
]


def test_what_the_ingester_refuses_is_not_json(tmp_path: Path) -> None:
    text = json.dumps(event(request={"method": "GET", "body": {"score": 0}}))
    lines = [text.replace('"score": 0', f'"score": {token}') for token, _ in REFUSED]
    assert text not in lines
    spool = tmp_path / "events.jsonl"
    spool.write_text(json.dumps(event()) + "\n" + "\n".join(lines) + "\n")
    result = check(str(spool))
    assert result.returncode == 1
    *reported, summary = result.stdout.splitlines()
    assert len(reported) == len(REFUSED)
    for number, (line, (_token, reason)) in enumerate(zip(reported, REFUSED), start=2):
        assert line.startswith(f"{spool}:{number}: not valid JSON: {reason}"), line
    assert summary == f"{len(REFUSED) + 1} events in 1 file: 1 valid, {len(REFUSED)} invalid"
    single = tmp_path / "one.json"
    single.write_text(json.dumps(json.loads(lines[0]), indent=2))  # pretty-printed, with NaN
    result = check(str(single))
    assert result.returncode == 1
    [(number, column)] = [(n, line.index("NaN") + 1) for n, line in
                          enumerate(single.read_text().splitlines(), start=1) if "NaN" in line]
    assert result.stdout.splitlines()[0] == \
        f"{single}:{number}: not valid JSON: NaN is not a JSON number (column {column})"


def test_a_byte_order_mark_is_not_json(tmp_path: Path) -> None:
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(event()).encode())
    result = check(str(bom))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        f"{bom}:1: not valid JSON: UTF-8 byte order mark (BOM) is not supported (column 1)")


def test_an_event_over_the_size_limit(tmp_path: Path) -> None:
    from tracelab.events import MAX_EVENT_BYTES

    big = event(request={"method": "POST", "body": "x" * MAX_EVENT_BYTES})
    spool = tmp_path / "big.jsonl"
    spool.write_text(json.dumps(event()) + "\n" + json.dumps(big) + "\n")
    result = check(str(spool))
    assert result.returncode == 1
    size = len(json.dumps(big).encode())
    assert result.stdout.splitlines() == [
        f"{spool}:2: event: {size} bytes of JSON, over the limit of {MAX_EVENT_BYTES} "
        "(MAX_EVENT_BYTES): the ingester and the spool dead-letter it",
        "2 events in 1 file: 1 valid, 1 invalid",
    ]


def test_a_json_array_is_a_list_of_events(tmp_path: Path) -> None:
    listed = tmp_path / "events.json"
    listed.write_text(json.dumps([event(), event(event_id="e2", status="fine"), event()],
                                 indent=2))
    result = check(str(listed))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{listed}:[1]: status: expected 'ok' or 'error', got 'fine'",
        "3 events in 1 file: 2 valid, 1 invalid",
    ]
    array_example = SPEC / "invalid" / "not-an-object.json"
    assert check(str(array_example)).stdout == "1 event in 1 file: 1 valid, 0 invalid\n"
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert check(str(empty)).stdout == "0 events in 1 file: 0 valid, 0 invalid\n"


def test_a_json_lines_line_holding_an_array_is_one_invalid_event(tmp_path: Path) -> None:
    spool = tmp_path / "events.jsonl"
    spool.write_text(json.dumps(event()) + "\n" + json.dumps([event()]) + "\n")
    assert check(str(spool)).stdout.splitlines()[0] == \
        f"{spool}:2: event: expected a JSON object, got list"


def test_the_json_schema_is_checked_too(tmp_path: Path) -> None:
    """A schema that wants more than validate(): its problems are reported, marked, and a
    field validate() already named is not repeated."""
    schema = json.loads((SPEC.parent / "trace-event.schema.json").read_text())
    schema["required"] = [*schema["required"], "tags"]
    schema["properties"]["service"] = {"type": "string", "pattern": "^[a-z-]+$"}
    stricter = tmp_path / "stricter.schema.json"
    stricter.write_text(json.dumps(schema))
    events = tmp_path / "events.jsonl"
    no_tags = event(service="Billing Worker")
    no_tags.pop("tags", None)
    events.write_text("\n".join(json.dumps(e) for e in [
        event(tags={"env": "ci"}), no_tags, event(tags={"env": "ci"}, status="nope")]) + "\n")
    result = check("--schema", str(stricter), str(events))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{events}:2: service: 'Billing Worker' does not match '^[a-z-]+$' (JSON Schema); "
        "tags: required field is missing (JSON Schema)",
        f"{events}:3: status: expected 'ok' or 'error', got 'nope'",
        "3 events in 1 file: 1 valid, 2 invalid",
    ]
    # the shipped schema says the same as validate() about the spec's examples
    assert check(*map(str, VALID)).returncode == 0


@pytest.mark.parametrize("kind", ["missing", "not-json", "not-a-schema"])
def test_an_unusable_schema_exits_2(tmp_path: Path, kind: str) -> None:
    schema = tmp_path / "schema.json"
    if kind == "not-json":
        schema.write_text("{not json")
    elif kind == "not-a-schema":
        schema.write_text(json.dumps({"type": 12}))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(event()))
    result = check("--schema", str(schema), str(good))
    assert result.returncode == 2
    assert result.stdout == ""
    expected = {"missing": f"cannot read the schema {schema}: No such file or directory",
                "not-json": f"the schema {schema} is not JSON",
                "not-a-schema": f"{schema} is not a valid JSON Schema: 12 is not valid"}[kind]
    assert result.stderr.startswith(f"tracelab validate: {expected}")


def test_without_jsonschema_it_says_so_and_still_runs_validate(tmp_path: Path) -> None:
    from test_cli_extras import run_without

    good = tmp_path / "good.json"
    good.write_text(json.dumps(event()))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(event(status="nope")))
    note = ("tracelab validate: the jsonschema package is not installed: checking with "
            "tracelab.events.validate() only, not against the JSON Schema (pip install "
            "jsonschema)\n")
    result = run_without(tmp_path, ("jsonschema",), "validate", str(good))
    assert (result.returncode, result.stderr) == (0, note)
    assert result.stdout == "1 event in 1 file: 1 valid, 0 invalid\n"
    result = run_without(tmp_path, ("jsonschema",), "validate", str(good), str(bad))
    assert (result.returncode, result.stderr) == (1, note)
    assert result.stdout.splitlines()[0] == f"{bad}:1: status: expected 'ok' or 'error', got 'nope'"
    result = run_without(tmp_path, ("jsonschema",), "validate", "--schema", "x.json", str(good))
    assert result.returncode == 2
    assert result.stderr == ("tracelab validate: --schema needs the jsonschema package: pip "
                             "install jsonschema\n")


@settings(max_examples=60, deadline=None)
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=3),
    max_leaves=8))
def test_the_verdict_is_the_ingesters(body: object) -> None:
    """In process, over many bodies (NaN and infinities included, as Python's json writes
    them): an event is valid for `validate` exactly when orjson parses it and validate()
    accepts it, which is what the ingester stores."""
    import orjson

    from tracelab.cli.validate import problems_of
    from tracelab.event_files import read_events
    from tracelab.events import validate

    line = json.dumps(event(request={"method": "POST", "body": body})).encode()
    [(_where, value, parse_problem, size)] = list(read_events(line + b"\n"))
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        assert parse_problem is not None and parse_problem.startswith("not valid JSON")
        return
    assert parse_problem is None and value == parsed
    assert (problems_of(value, size, _schema_check()) == []) == (validate(parsed) == [])




@functools.cache
def _schema_check():  # building the validator once costs more than one example
    from tracelab.cli.validate import schema_checker

    return schema_checker(None)
