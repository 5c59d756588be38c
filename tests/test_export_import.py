"""`tracelab export` and `tracelab import` as a user runs them: real subprocesses over a store
recorded by the SDK in a real subprocess (embedded mode) against a loopback HTTP server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import LoopbackHTTP
from recorded_runs import record_run

WORKFLOW = "shop/checkout v2"
RUN = "run/1 ü"


def tracelab(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env["TRACELAB_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "tracelab.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture
def recorded(tmp_path: Path, loopback_http: LoopbackHTTP) -> Path:
    home = tmp_path / "home"
    record_run(home, loopback_http.url, WORKFLOW, RUN, "--api-key", "sk_live_51HxAbCdEfGhIjKlMnOp")
    return home


def test_export_writes_the_run_in_start_order_to_a_safe_default_name(recorded: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = tracelab(recorded, "export", RUN, cwd=out)
    assert done.returncode == 0, done.stderr
    path = out / "shop_checkout_v2-run_1_.jsonl"
    assert [p.name for p in out.iterdir()] == [path.name]
    assert f"exported 3 events of run {RUN!r} to {path.name}" in done.stderr
    events = lines(path)
    assert len(events) == 3 and {e["run_id"] for e in events} == {RUN}
    assert [(e["started_at"], e["event_id"]) for e in events] == \
        sorted((e["started_at"], e["event_id"]) for e in events)
    post = next(e for e in events if e["endpoint"] == "POST /v1/charges")
    assert post["request"]["body"]["amount"] == 4200  # payloads are exported, not just summaries
    assert post["request"]["headers"]["Authorization"] == "[REDACTED]"
    text = path.read_text()
    assert "sk_live_51Hx" not in text and "hunter2" not in text

    validated = tracelab(recorded, "validate", str(path), cwd=out)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "3 events in 1 file: 3 valid, 0 invalid" in validated.stdout
    scanned = tracelab(recorded, "scan", str(path), cwd=out)
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr


def test_export_to_a_named_file_and_to_stdout(recorded: Path, tmp_path: Path) -> None:
    target = tmp_path / "named.jsonl"
    assert tracelab(recorded, "export", RUN, "-o", str(target), cwd=tmp_path).returncode == 0
    piped = tracelab(recorded, "export", RUN, "-o", "-", cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.encode() == target.read_bytes()


def test_export_refuses_an_unknown_run(recorded: Path, tmp_path: Path) -> None:
    done = tracelab(recorded, "export", "no-such-run", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown run_id 'no-such-run'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.jsonl"))


def test_import_stores_each_event_once_and_the_run_exports_again(recorded: Path,
                                                                  tmp_path: Path) -> None:
    exported = tmp_path / "run.jsonl"
    assert tracelab(recorded, "export", RUN, "-o", str(exported), cwd=tmp_path).returncode == 0
    fresh = tmp_path / "fresh-home"
    first = tracelab(fresh, "import", str(exported), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "imported 3 events from 1 file: 3 stored, 0 duplicates, 0 rejected" in first.stdout
    again = tracelab(fresh, "import", str(exported), str(exported), cwd=tmp_path)
    assert again.returncode == 0
    assert "imported 6 events from 2 files: 0 stored, 6 duplicates, 0 rejected" in again.stdout
    back = tmp_path / "back.jsonl"
    assert tracelab(fresh, "export", RUN, "-o", str(back), cwd=tmp_path).returncode == 0
    assert lines(back) == lines(exported)


def test_import_rejects_bad_lines_with_reasons_and_stores_the_rest(recorded: Path,
                                                                   tmp_path: Path) -> None:
    exported = tmp_path / "run.jsonl"
    assert tracelab(recorded, "export", RUN, "-o", str(exported), cwd=tmp_path).returncode == 0
    good = exported.read_bytes().splitlines()
    broken = orjson.loads(good[1])
    del broken["kind"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"\n".join([good[0], orjson.dumps(broken), b"{not json", good[2]]) + b"\n")
    fresh = tmp_path / "fresh-home"
    done = tracelab(fresh, "import", str(mixed), cwd=tmp_path)
    assert done.returncode == 1
    assert f"{mixed}:2: rejected: kind: required field is missing" in done.stdout
    assert f"{mixed}:3: rejected: not valid JSON" in done.stdout
    assert "2 stored, 0 duplicates, 2 rejected" in done.stdout


def test_import_of_a_file_that_cannot_be_read_exits_2(tmp_path: Path) -> None:
    done = tracelab(tmp_path / "home", "import", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert done.returncode == 2
    assert "missing.jsonl: cannot read: No such file or directory" in done.stderr


def test_import_with_a_redis_url_writes_under_partition_leases(recorded: Path, tmp_path: Path,
                                                               redis_server) -> None:
    """Ingesters on other hosts may write the same store: an import with a Redis takes the
    same partition leases they do (their fencing token is in every file it writes)."""
    exported = tmp_path / "run.jsonl"
    assert tracelab(recorded, "export", RUN, "-o", str(exported), cwd=tmp_path).returncode == 0
    fresh = tmp_path / "fresh-home"
    done = tracelab(fresh, "import", str(exported), "--redis-url", redis_server.url,
                    cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    files = list((fresh / "store" / "events").rglob("part-*.parquet"))
    assert files and all("-t" in f.name for f in files), files
