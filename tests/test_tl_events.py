"""`tl.events(wf)`: the notebook's events query, under the name the contract module also has."""
from __future__ import annotations

import subprocess
import sys

import tracelab as tl
from event_factory import BASE_NS, make_event
from tracelab.store import query
from tracelab.store.writer import StoreWriter


def test_tl_events_is_the_events_query(tracelab_home) -> None:
    StoreWriter().write([make_event("shop", "run-a", seq=i, started_at=BASE_NS + i * 10**6,
                                    status="error" if i == 2 else "ok") for i in range(5)]
                        + [make_event("other", "run-o", seq=0)])
    frame = tl.events("shop")
    assert list(frame["run_id"]) == ["run-a"] * 5
    assert frame.equals(query.events("shop"))
    errors = tl.events("shop", status="error")
    assert len(errors) == 1 and errors["status"].iloc[0] == "error"
    assert tl.events("no-such-workflow").empty


def test_the_contract_module_still_imports_as_before() -> None:
    from tracelab.events import SCHEMA_VERSION, validate

    assert SCHEMA_VERSION == 1
    assert validate({}) != []
    # a fresh interpreter: `tl.events` is callable right after `import tracelab`, without pandas
    code = ("import sys, tracelab as tl; assert callable(tl.events); "
            "assert 'pandas' not in sys.modules and 'pyarrow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
