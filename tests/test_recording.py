"""Recordings (`tracelab.replay.recording`) and the command the SDK records in tags.

Runs are recorded by the SDK in real subprocesses (embedded mode) against a loopback server;
files are real files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings, strategies as st

import tracelab
from conftest import LoopbackHTTP
from event_factory import make_event
from recorded_runs import record_run
from tracelab.events import MAX_TAG_VALUE_CHARS, MAX_TAGS
from tracelab.replay.recording import (RecordingError, export_run, load_recording,
                                       write_recording)
from tracelab.sdk.command import TRUNCATED, argv_text, parse_argv, redact_argv
from tracelab.store import query
from tracelab.store.layout import resolve_layout

SECRET = "sk_live_51HxAbCdEfGhIjKlMnOpQrSt"


# -- the command in tags ----------------------------------------------------------------------

def test_the_command_is_recorded_redacted_and_parsed_back(tmp_path: Path,
                                                          loopback_http: LoopbackHTTP) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work dir"
    work.mkdir()
    argv = record_run(home, loopback_http.url, "wf", "run-cmd", "--api-key", SECRET,
                      "--password=hunter2", "--db", "redis://:pw-1234567@db:6379/0",
                      "--url=https://h.example/x?access_token=tok123456", "plain",
                      cwd=work, env={"TRACELAB_TAGS": json.dumps({"team": "payments"})})
    recording = load_recording("run-cmd", layout=resolve_layout(home=home))
    assert recording.command == {
        "argv": [*argv[1:5], "--api-key", "[REDACTED]", "--password=[REDACTED]", "--db",
                 "redis://:[REDACTED]@db:6379/0",
                 "--url=https://h.example/x?access_token=[REDACTED]", "plain"],
        "cwd": str(work), "executable": sys.executable}
    assert recording.source == "run:run-cmd" and recording.run_id == "run-cmd"
    for event in recording.events:  # every event carries the command and the user's tags
        tags = event["tags"]
        assert tags["team"] == "payments" and tags["env"] == "test"
        assert {"command.argv", "command.cwd", "command.executable"} <= set(tags)
    frame = query.executions("wf", layout=resolve_layout(home=home))
    execution_tags = dict(frame["tags"].iloc[0])
    assert parse_argv(execution_tags["command.argv"])[0] == recording.command["argv"]
    everything = orjson.dumps(recording.events).decode()
    assert SECRET not in everything and "hunter2" not in everything
    assert "pw-1234567" not in everything and "tok123456" not in everything


def test_user_tags_win_over_the_command_tags(tmp_path: Path,
                                             loopback_http: LoopbackHTTP) -> None:
    home = tmp_path / "home"
    record_run(home, loopback_http.url, "wf", "run-own",
               env={"TRACELAB_TAGS": json.dumps({"command.cwd": "/mine"})})
    recording = load_recording("run-own", layout=resolve_layout(home=home))
    assert recording.command is not None and recording.command["cwd"] == "/mine"


def test_the_command_tags_respect_the_tag_count_limit(tracelab_home: Path) -> None:
    config = tracelab.init(workflow_name="wf", tags={f"t{i}": "v" for i in range(MAX_TAGS - 2)})
    try:
        assert config is not None and len(config.tags) == MAX_TAGS
        assert "command.argv" in config.tags and "command.cwd" in config.tags
        assert "command.executable" not in config.tags
    finally:
        tracelab.shutdown()
    full = tracelab.init(workflow_name="wf", tags={f"t{i}": "v" for i in range(MAX_TAGS)})
    try:
        assert full is not None and not [k for k in full.tags if k.startswith("command.")]
    finally:
        tracelab.shutdown()


def test_a_secret_flag_hides_the_next_argument_too() -> None:
    assert redact_argv(["app", "--token", "abc", "--client-secret", "xyz", "--name", "bob"]) == \
        ["app", "--token", "[REDACTED]", "--client-secret", "[REDACTED]", "--name", "bob"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=40))
def test_argv_text_fits_the_tag_and_never_passes_off_a_cut_argv(argv: list[str]) -> None:
    text = argv_text(argv)
    assert len(text) <= MAX_TAG_VALUE_CHARS
    parsed, truncated = parse_argv(text)
    if truncated:
        assert parsed is None and orjson.loads(text)[-1] == TRUNCATED
    else:
        assert parsed == argv


def test_a_cut_argv_is_reported_not_run(tmp_path: Path) -> None:
    event = make_event(tags={"command.argv": argv_text(["python", "x" * 2000]),
                             "command.cwd": "/w"})
    path = write_recording([event], tmp_path / "cut.jsonl")
    assert load_recording(path).command == {"argv": None, "cwd": "/w", "executable": None,
                                            "truncated": True}


# -- files ---------------------------------------------------------------------------------------

def test_a_file_loads_in_start_order_whichever_order_it_holds(tmp_path: Path) -> None:
    events = [make_event(seq=s) for s in (3, 1, 2)]
    events.append(make_event(started_at=events[1]["started_at"]))  # a tie: event_id decides
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n\n" for e in events))
    recording = load_recording(str(path))
    assert [(e["started_at"], e["event_id"]) for e in recording.events] == \
        sorted((e["started_at"], e["event_id"]) for e in events)
    assert (recording.run_id, recording.workflow, recording.command) == ("run-1", "checkout", None)
    array = tmp_path / "r.json"
    array.write_bytes(orjson.dumps(events))
    assert load_recording(array).events == recording.events


def test_a_file_that_mixes_runs_has_no_run_id(tmp_path: Path) -> None:
    path = write_recording([make_event(run_id="a"), make_event(run_id="b", seq=1)],
                           tmp_path / "mixed.jsonl")
    assert load_recording(path).run_id is None


def test_an_invalid_event_names_its_file_and_line(tmp_path: Path) -> None:
    bad = make_event(seq=1)
    bad["latency_ms"] = "slow"
    path = tmp_path / "bad.jsonl"
    path.write_bytes(orjson.dumps(make_event()) + b"\n" + orjson.dumps(bad) + b"\n")
    with pytest.raises(RecordingError, match=rf"{path}:2: invalid event: latency_ms"):
        load_recording(path)


@pytest.mark.parametrize("content, message", [
    (b"", "holds no events"),
    (b"{\"a\": 1}\n{oops\n", r"bad.jsonl:1: invalid event: .*\(and 1 more\)"),
    (b"[1, 2", "not valid JSON"),
])
def test_files_that_are_no_recording_are_refused(tmp_path: Path, content: bytes,
                                                 message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match=message):
        load_recording(path)


def test_neither_file_nor_run_is_one_clear_error(tracelab_home: Path, tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r"'nope.jsonl' is neither a recording file nor a "
                                             r"run id in the store: unknown run_id"):
        load_recording("nope.jsonl")
    with pytest.raises(RecordingError, match="not a file of events"):
        load_recording(tmp_path)


def test_write_recording_is_atomic_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "r.jsonl"
    target.write_text("old")
    events = [make_event(seq=2), make_event(seq=1)]
    write_recording(events, target)
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]
    assert [orjson.loads(x) for x in target.read_bytes().splitlines()] == \
        sorted(events, key=lambda e: e["started_at"])


def test_export_round_trips_what_the_store_holds(tmp_path: Path,
                                                 loopback_http: LoopbackHTTP) -> None:
    home = tmp_path / "home"
    record_run(home, loopback_http.url, "wf", "run-x")
    layout = resolve_layout(home=home)
    path = export_run("run-x", tmp_path / "x.jsonl", layout=layout)
    exported = load_recording(path).events
    assert exported == [query.event_dict(e["event_id"], layout=layout) for e in exported]
    assert load_recording("run-x", layout=layout).events == exported
    with pytest.raises(RecordingError, match="unknown run_id 'run-y'"):
        export_run("run-y", layout=layout)


def test_an_event_over_the_size_limit_is_refused_as_the_ingester_refuses_it(
        tmp_path: Path) -> None:
    from tracelab.events import MAX_EVENT_BYTES
    from tracelab.replay.recording import import_recordings

    big = make_event(seq=1, body_bytes=MAX_EVENT_BYTES)
    path = tmp_path / "big.jsonl"
    path.write_bytes(orjson.dumps(make_event()) + b"\n" + orjson.dumps(big) + b"\n")
    with pytest.raises(RecordingError, match=rf"{path}:2: invalid event: event: \d+ bytes"):
        load_recording(path)
    report = import_recordings([path], layout=resolve_layout(home=tmp_path / "home"))
    assert report.stored == 1 and [w for w, _ in report.rejected] == [f"{path}:2"]


def test_non_utf8_arguments_and_directories_still_make_json_tags(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tracelab.sdk.command import command_tags

    odd = tmp_path / "dir-\udcff"  # a directory whose name is not UTF-8, as Python sees it
    odd.mkdir()
    monkeypatch.chdir(odd)
    monkeypatch.setattr(sys, "argv", ["agent.py", "name-\udcfe"])
    tags = command_tags()
    assert orjson.loads(orjson.dumps(tags)) == tags
    assert parse_argv(tags["command.argv"])[0] == ["agent.py", "name-\ufffd"]
    assert tags["command.cwd"].endswith("dir-\ufffd")
