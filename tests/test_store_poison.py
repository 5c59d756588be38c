"""One event the store cannot hold never makes `StoreWriter.write` raise: it comes back in
`report.rejected` with its reason and every other event of the batch is written."""
from __future__ import annotations

import pytest

from event_factory import make_event
from tracelab.store import query
from tracelab.store.writer import StoreWriter


def _deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def _cyclic() -> dict:
    body: dict = {"k": 1}
    body["self"] = body
    return body


POISON = {
    "nesting-300": lambda: make_event("poison", "run-p", request={"body": _deep(300)}),
    "non-str-key": lambda: make_event("poison", "run-p", response={"body": {1: "x"}}),
    "int-beyond-64-bits": lambda: make_event("poison", "run-p", request={"n": 2**70}),
    "cycle": lambda: make_event("poison", "run-p", request=_cyclic()),
    "surrogate-in-body": lambda: make_event("poison", "run-p", request={"t": "\ud800"}),
    "surrogate-in-run-id": lambda: make_event("poison", "run-\udcff"),
    "surrogate-in-workflow": lambda: make_event("poison-\ud83d", "run-p"),
    "surrogate-tag": lambda: make_event("poison", "run-p", tags={"k": "\udfff"}),
    "outside-field": lambda: make_event("poison", "run-p", vendor={"x": {2: 3}}),
    "unhashable-event-id": lambda: {**make_event("poison", "run-p"), "event_id": ["x"]},
    "not-a-dict": lambda: None,
    "missing-fields": lambda: {"event_id": "only-an-id"},
    "bad-started-at": lambda: make_event("poison", "run-p", started_at=2**80),
}


@pytest.mark.parametrize("make_poison", POISON.values(), ids=POISON.keys())
def test_a_poison_event_is_rejected_and_the_rest_of_the_batch_written(tracelab_home,
                                                                       make_poison):
    good = [make_event("poison", "run-1", seq=i) for i in range(4)]
    poison = make_poison()
    batch = good[:2] + [poison] + good[2:]
    report = StoreWriter().write(batch)
    assert report.written == 4 and report.duplicates == 0
    assert len(report.rejected) == 1
    rejected, reason = report.rejected[0]
    assert rejected is poison
    assert isinstance(reason, str) and reason.startswith("cannot be") and len(reason) <= 500
    runs = query.executions("poison")
    assert runs["run_id"].tolist() == ["run-1"] and runs["events"].tolist() == [4]


def test_many_poison_events_in_a_large_batch_reject_only_themselves(tracelab_home):
    events = [make_event("bulk", f"run-{i % 7}", seq=i) for i in range(3000)]
    bad = {5, 1500, 2999}
    for i in bad:
        events[i]["request"] = {"body": _deep(260)}
    report = StoreWriter().write(events)
    assert report.written == 3000 - len(bad)
    assert {id(e) for e, _ in report.rejected} == {id(events[i]) for i in bad}
    assert int(query.executions("bulk")["events"].sum()) == 3000 - len(bad)
    # Nothing of the rejected events was stored: writing the good ones again is all duplicates.
    again = StoreWriter().write([e for i, e in enumerate(events) if i not in bad])
    assert (again.written, again.duplicates) == (0, 3000 - len(bad))
