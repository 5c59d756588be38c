"""The event contract: the shared spec/ examples under both the JSON Schema and validate()."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tracelab import events
from tracelab.events import InvalidEvent, ensure_valid, validate

SPEC = Path(__file__).resolve().parent.parent / "spec"
VALID = sorted((SPEC / "examples" / "valid").glob("*.json"))
INVALID = sorted((SPEC / "examples" / "invalid").glob("*.json"))


def load(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(events.schema_path().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema_validator(schema: dict) -> Draft202012Validator:
    return Draft202012Validator(schema)


def good_event() -> dict:
    return load(SPEC / "examples" / "valid" / "http-plain.json")  # type: ignore[return-value]


# ---- the schema file itself ----------------------------------------------------------------

def test_schema_is_a_valid_draft_2020_12_schema(schema: dict) -> None:
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://tracelab.dev/schema/trace-event-1.json"


def test_schema_path_finds_the_repo_spec() -> None:
    assert events.schema_path().resolve() == (SPEC / "trace-event.schema.json").resolve()


def test_schema_required_list_is_REQUIRED_FIELDS(schema: dict) -> None:
    assert tuple(schema["required"]) == events.REQUIRED_FIELDS


def test_schema_knows_every_contract_field(schema: dict) -> None:
    assert set(schema["properties"]) == set(events.REQUIRED_FIELDS) | set(events.OPTIONAL_FIELDS)
    assert schema["properties"]["status"]["enum"] == list(events.STATUSES)
    assert schema.get("additionalProperties", True) is True


def test_schema_limits_match_the_constants(schema: dict) -> None:
    props = schema["properties"]
    name = schema["$defs"]["name"]
    assert props["event_id"]["maxLength"] == events.MAX_ID_CHARS
    assert props["span_id"]["maxLength"] == props["parent_id"]["maxLength"] == events.MAX_ID_CHARS
    assert name["maxLength"] == events.MAX_NAME_CHARS
    assert all(props[f]["$ref"] == "#/$defs/name" for f in events.NAME_FIELDS)
    assert props["target"]["maxLength"] == events.MAX_TARGET_CHARS
    assert props["endpoint"]["maxLength"] == events.MAX_ENDPOINT_CHARS
    assert props["tags"]["maxProperties"] == events.MAX_TAGS
    assert props["tags"]["propertyNames"]["maxLength"] == events.MAX_TAG_KEY_CHARS
    assert props["tags"]["additionalProperties"]["maxLength"] == events.MAX_TAG_VALUE_CHARS
    assert props["started_at"]["maximum"] == props["pid"]["maximum"] == events.MAX_INT64
    assert props["status_code"]["maximum"] == events.MAX_STATUS_CODE
    assert props["schema"]["const"] == events.SCHEMA_VERSION


def test_typed_definition_matches_field_lists() -> None:
    assert events.TraceEvent.__required_keys__ == frozenset(events.REQUIRED_FIELDS)
    assert events.TraceEvent.__optional_keys__ == frozenset(events.OPTIONAL_FIELDS)


# ---- the shared examples, each its own test id ---------------------------------------------

def test_there_are_enough_examples() -> None:
    assert len(VALID) >= 7 and len(INVALID) >= 8


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_example_passes_the_schema(path: Path, schema_validator: Draft202012Validator) -> None:
    errors = [e.message for e in schema_validator.iter_errors(load(path))]
    assert errors == []


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_example_passes_validate(path: Path) -> None:
    event = load(path)
    assert validate(event) == []
    assert ensure_valid(event) is event


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_example_fails_the_schema(path: Path, schema_validator: Draft202012Validator) -> None:
    assert list(schema_validator.iter_errors(load(path))), f"{path.name} passed the JSON Schema"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_example_fails_validate_with_one_problem(path: Path) -> None:
    # Each invalid example has exactly one thing wrong; validate() must name just that.
    problems = validate(load(path))
    assert len(problems) == 1, problems
    with pytest.raises(InvalidEvent) as raised:
        ensure_valid(load(path))
    assert raised.value.problems == problems


# ---- validate()'s messages -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"started_at": "2024-05-01"}, "started_at: expected an integer (epoch nanoseconds), got str"),
        ({"started_at": 1714557600.5}, "started_at: expected an integer (epoch nanoseconds), got float"),
        ({"started_at": -1}, "started_at: out of range, must be 0..9223372036854775807, got -1"),
        ({"schema": True}, "schema: expected the integer 1, got bool"),
        ({"schema": 2}, "schema: unsupported version 2, expected 1"),
        ({"workflow": ""}, "workflow: must not be empty"),
        ({"target": "h" * 513}, "target: too long (513 chars, max 512)"),
        ({"latency_ms": -0.5}, "latency_ms: must be >= 0, got -0.5"),
        ({"latency_ms": False}, "latency_ms: expected a number (milliseconds), got bool"),
        ({"latency_ms": float("nan")}, "latency_ms: must be a finite number, got nan"),
        ({"latency_ms": float("inf")}, "latency_ms: must be a finite number, got inf"),
        ({"status": "success"}, "status: expected 'ok' or 'error', got 'success'"),
        ({"request": None}, "request: expected an object, got null"),
        ({"response": []}, "response: expected an object or null, got list"),
        ({"status_code": 1000}, "status_code: out of range, must be 0..999, got 1000"),
        ({"status_code": "503"}, "status_code: expected an integer or null, got str"),
        ({"error": "boom"}, "error: expected an object {type, message} or null, got str"),
        ({"error": {"type": "ValueError", "message": 3}}, "error.message: expected a string, got int"),
        ({"tags": None}, "tags: expected an object of string -> string, got null"),
        ({"tags": {"model": 4}}, "tags['model']: expected a string value, got int"),
        ({"tags": {"k": "v" * 1025}}, "tags['k']: value too long (1025 chars, max 1024)"),
        ({"tags": {"k" * 129: "v"}}, f"tags[{'k' * 40 + '…'!r}]: key too long (129 chars, max 128)"),
        ({"tags": {f"t{i}": "v" for i in range(65)}}, "tags: too many entries (65, max 64)"),
        ({"span_id": 7}, "span_id: expected a string, got int"),
        ({"host": None}, "host: expected a string, got null"),
        ({"pid": True}, "pid: expected an integer, got bool"),
    ],
    ids=lambda value: None if isinstance(value, dict) else value.split(":")[0],
)
def test_validate_names_the_field_and_what_was_wrong(change: dict, expected: str) -> None:
    event = good_event()
    event.update(change)
    assert validate(event) == [expected]


def test_missing_fields_are_each_named() -> None:
    event = good_event()
    del event["event_id"], event["response"]
    assert validate(event) == ["event_id: required field is missing",
                               "response: required field is missing"]


def test_empty_object_lists_every_required_field() -> None:
    assert validate({}) == [f"{field}: required field is missing" for field in events.REQUIRED_FIELDS]


@pytest.mark.parametrize("value", [[], "event", 42, None, True, b"{}"])
def test_non_object_input_is_one_problem(value: object) -> None:
    problems = validate(value)
    assert len(problems) == 1 and problems[0].startswith("event: expected a JSON object, got ")


def test_several_problems_are_all_reported() -> None:
    event = good_event()
    event.update(schema=2, status="fine", latency_ms=-1)
    assert [p.split(":")[0] for p in validate(event)] == ["schema", "latency_ms", "status"]


def test_nullable_optionals_and_extras_are_allowed() -> None:
    event = good_event()
    event.update(span_id=None, parent_id=None, status_code=None, error=None, response=None,
                 tags={}, anything={"nested": [1, 2]}, host="", span_id_extra=1)
    assert validate(event) == []


def test_integral_latency_and_zero_limits_are_valid() -> None:
    event = good_event()
    event.update(latency_ms=0, started_at=0, status_code=0, pid=0, span_id="",
                 event_id="x" * 128, endpoint="e" * 2048, tags={"k" * 128: "v" * 1024})
    assert validate(event) == []


def test_str_and_dict_subclasses_are_judged_by_the_slow_path() -> None:
    class Str(str):
        pass

    event = good_event()
    event["workflow"] = Str("billing-agent")
    assert validate(event) == []


def test_ensure_valid_returns_the_event_and_raises_a_value_error() -> None:
    event = good_event()
    assert ensure_valid(event) is event
    with pytest.raises(ValueError, match=r"invalid TraceEvent: status: expected 'ok' or 'error'"):
        ensure_valid({**event, "status": "nope"})


def test_documented_gap_integral_floats_pass_the_schema_but_not_validate(
        schema_validator: Draft202012Validator) -> None:
    # spec/README.md: JSON Schema cannot tell 1 from 1.0; validate() insists on integers.
    event = good_event()
    event.update(schema=1.0, started_at=float(event["started_at"]))
    assert schema_validator.is_valid(event)
    assert [p.split(":")[0] for p in validate(event)] == ["schema", "started_at"]


# ---- id helpers ----------------------------------------------------------------------------

def test_new_event_id_is_32_lowercase_hex_and_random() -> None:
    ids = {events.new_event_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_new_span_id_is_16_lowercase_hex_and_random() -> None:
    ids = {events.new_span_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_new_run_id_is_a_uuid4_string() -> None:
    run_id = events.new_run_id()
    assert str(uuid.UUID(run_id)) == run_id and uuid.UUID(run_id).version == 4
    assert events.new_run_id() != run_id


def test_ids_fit_the_contract() -> None:
    event = good_event()
    event.update(event_id=events.new_event_id(), run_id=events.new_run_id(),
                 span_id=events.new_span_id(), parent_id=events.new_span_id())
    assert validate(event) == []


def test_events_module_imports_only_the_standard_library() -> None:
    # Loaded on its own (not via the package __init__) so only events.py's own imports count.
    loader = (
        "import importlib.util, sys; before = set(sys.modules); "
        "spec = importlib.util.spec_from_file_location('tracelab_events', sys.argv[1]); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "print(sorted(m for m in set(sys.modules) - before "
        "             if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    out = subprocess.run([sys.executable, "-c", loader, events.__file__],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ids_after_fork_differ_between_parent_and_child() -> None:
    """Ids come from a per-process generator: a forked child must not replay the parent's."""
    import os

    from tracelab.events import new_event_id, new_span_id

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write_end, f"{new_event_id()} {new_span_id()}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_event, child_span = os.read(read_end, 200).decode().split()
    os.close(read_end)
    os.close(write_end)
    assert (new_event_id(), new_span_id()) != (child_event, child_span)
    assert child_event != new_event_id()


# ---- whole-event limits: nesting depth and size ---------------------------------------------

def nested(levels: int, leaf: object = 1) -> object:
    """`levels` arrays inside each other around `leaf` (the outermost is one level)."""
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("field", ["request", "response", "error", "extra_field"])
def test_nesting_up_to_the_limit_is_valid_and_one_more_is_rejected(field: str) -> None:
    # The event is level 1, the field's object level 2: `levels` more inside it.
    room = events.MAX_NESTING_DEPTH - 1
    for levels, ok in ((room - 1, True), (room, False)):
        event = good_event()
        event[field] = {"type": "T", "message": "m", "body": nested(levels)}
        problems = validate(event)
        assert (problems == []) is ok, (field, levels, problems)
        if not ok:
            assert problems == [f"event: nested deeper than {events.MAX_NESTING_DEPTH} levels "
                                "(the event object is level 1, each object or array inside "
                                "adds one)"]


def test_nesting_far_beyond_any_serializer_is_a_problem_not_an_exception() -> None:
    event = good_event()
    event["request"] = {"body": nested(200_000)}  # orjson refuses 255, json recursion ~1000
    assert validate(event) == [f"event: nested deeper than {events.MAX_NESTING_DEPTH} levels "
                               "(the event object is level 1, each object or array inside "
                               "adds one)"]
    assert events.nests_within(nested(200_000), events.MAX_NESTING_DEPTH) is False
    assert events.nests_within(nested(64), 64) and not events.nests_within(nested(65), 64)
    assert events.nests_within("scalar", 0) and events.nests_within({}, 1)


def test_the_schema_states_the_limits_validate_enforces(schema: dict) -> None:
    assert events.MAX_NESTING_DEPTH == 64
    assert events.MAX_EVENT_BYTES == 4 * 1024 * 1024
    text = schema["description"]
    assert f"nesting depth at most {events.MAX_NESTING_DEPTH}" in text
    assert "event object is depth 1" in text
    assert f"{events.MAX_EVENT_BYTES} bytes" in text
