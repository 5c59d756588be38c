"""The store on S3-compatible object storage: a real `moto_server` on loopback, real writers,
readers, compactions, `tracelab ingest` from a real redis-server, and DuckDB reading the
bucket without TraceLab.

Every test has its own prefix in the session's bucket (`s3` fixture). Crashes are placed
exactly with `StallingProxy`: the writer's requests go through it, it freezes the one request
a test names (a data file half uploaded, an old file about to be deleted), the test looks at
the bucket from outside at that instant and then kills the writer there.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import duckdb
import httpx
import orjson
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from conftest import free_port
from event_factory import make_runs, publish
from s3_server import (REGION, S3Endpoint, StallingProxy, never, parquet_delete,
                       parquet_upload)

import tracelab as tl
from tracelab.store import query
from tracelab.store.compact import compact
from tracelab.store.layout import JOURNAL_PREFIX, resolve_layout
from tracelab.store.objectstore import ObjectStoreError, filesystem_from_uri
from tracelab.store.writer import StoreWriter

ROOT = Path(__file__).resolve().parents[1]
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "TRACELAB_S3_ENDPOINT", "TRACELAB_STORE")


class Store:
    """One test's store: a fresh prefix in the session bucket, and ways to look at it."""

    def __init__(self, s3: S3Endpoint, prefix: str, home: Path) -> None:
        self.s3 = s3
        self.prefix = prefix
        self.uri = s3.store_uri(prefix)
        self.home = home

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment of a child process using this store (through `endpoint`)."""
        env = {k: v for k, v in os.environ.items() if k not in AWS_VARIABLES}
        env.update(self.s3.env, TRACELAB_STORE=self.uri, TRACELAB_HOME=str(self.home))
        if endpoint is not None:
            env["TRACELAB_S3_ENDPOINT"] = endpoint
        return env

    def keys(self) -> list[str]:
        """Every object under the prefix, listed by boto3 (not by TraceLab)."""
        client = self.s3.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.s3.bucket, Prefix=f"{self.prefix}/"):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def data_keys(self) -> list[str]:
        return [k for k in self.keys() if k.endswith(".parquet")
                and not k.rsplit("/", 1)[1].startswith((".", "_"))]

    def journals(self) -> list[str]:
        return [k for k in self.keys() if k.rsplit("/", 1)[1].startswith(JOURNAL_PREFIX)]

    def outside_table(self):  # type: ignore[no-untyped-def]
        """The events table as any S3 client sees it: pyarrow's S3 file system built here from
        the endpoint alone, hive partitions, no TraceLab code (what Spark or Trino would do)."""
        fs = pafs.S3FileSystem(endpoint_override=self.s3.url.split("://", 1)[1], scheme="http",
                               region=REGION, access_key=self.s3.env["AWS_ACCESS_KEY_ID"],
                               secret_key=self.s3.env["AWS_SECRET_ACCESS_KEY"])
        dataset = ds.dataset(f"{self.s3.bucket}/{self.prefix}/events", filesystem=fs,
                             format="parquet", partitioning="hive")
        return dataset.to_table(columns=["event_id", "workflow", "run_id", "date"])


@pytest.fixture
def store(s3: S3Endpoint, tracelab_home: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    made = Store(s3, f"t-{uuid.uuid4().hex}", tracelab_home)
    monkeypatch.setenv("TRACELAB_STORE", made.uri)
    return made


def assert_stored_once(store: Store, events: list[dict]) -> None:
    """Exactly `events`, once each: through TraceLab's query layer and from outside."""
    ids = store.outside_table().column("event_id").to_pylist()
    assert Counter(ids) == Counter(e["event_id"] for e in events)
    expected = Counter((e["workflow"], e["run_id"]) for e in events)
    for workflow in {e["workflow"] for e in events}:
        df = tl.executions(workflow).df
        assert df["run_id"].is_unique
        assert dict(zip(df["run_id"], df["events"])) == \
            {run: n for (wf, run), n in expected.items() if wf == workflow}
    assert query.store_stats()["events"] == len(events)


def run_child(store: Store, code: str, endpoint: str | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], env=store.env(endpoint), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# -- writing and reading ----------------------------------------------------------------------

def test_the_store_on_s3_is_written_read_back_and_deduplicated(store: Store) -> None:
    events = make_runs(workflows=2, runs=4, events_per_run=6, days=2)
    writer = StoreWriter()
    assert writer.layout.fs.type_name == "s3" and not writer.layout.is_local
    for i in range(0, len(events), 16):
        assert writer.write(events[i:i + 16]).written == len(events[i:i + 16])
    assert store.data_keys() and all(k.startswith(f"{store.prefix}/events/workflow=wf-")
                                     for k in store.keys() if not k.endswith("/"))
    assert_stored_once(store, events)
    frame = query.events("wf-1")
    assert sorted(frame["event_id"]) == sorted(e["event_id"] for e in events
                                               if e["workflow"] == "wf-1")
    # A redelivery, to the same writer and to a fresh one (another process, empty cache),
    # with new events mixed in: only the new ones are stored.
    again = writer.write(events[:10])
    assert (again.written, again.duplicates) == (0, 10)
    fresh = make_runs(workflows=1, runs=1, events_per_run=3)
    report = StoreWriter().write(events + fresh)
    assert (report.written, report.duplicates) == (3, len(events))
    assert_stored_once(store, events + fresh)


def test_a_missing_bucket_or_endpoint_is_a_clear_error(store: Store, monkeypatch) -> None:
    with pytest.raises(ObjectStoreError, match="bucket 'no-such-bucket' does not exist"):
        resolve_layout(f"s3://no-such-bucket/{store.prefix}")
    with pytest.raises(ObjectStoreError, match="names no bucket"):
        filesystem_from_uri("s3:///just/a/path")
    monkeypatch.setenv("TRACELAB_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # closed
    with pytest.raises(ObjectStoreError, match="cannot reach bucket"):
        resolve_layout(store.uri)
    monkeypatch.setenv("TRACELAB_S3_ENDPOINT", "ftp://127.0.0.1:21")
    with pytest.raises(ObjectStoreError, match="is not an endpoint"):
        resolve_layout(store.uri)
    # The CLI says it in one line, not a traceback.
    env = store.env()
    done = subprocess.run([sys.executable, "-m", "tracelab.cli", "stats", "--store",
                           f"s3://no-such-bucket/{store.prefix}"], env=env, cwd=ROOT,
                          capture_output=True, timeout=60)
    assert done.returncode == 1
    assert b"does not exist" in done.stderr and b"Traceback" not in done.stderr


def test_the_region_and_credentials_come_from_the_aws_variables(store: Store,
                                                                   monkeypatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session")
    fs, root = filesystem_from_uri(store.uri + "/")
    assert root == f"{store.s3.bucket}/{store.prefix}"
    options = fs.__reduce__()[1][0]  # what pickling hands to a copy: the options it was built with
    assert (options["region"], options["scheme"], options["endpoint_override"]) == \
        ("eu-west-3", "http", store.s3.url.split("://", 1)[1])
    assert (options["access_key"], options["secret_key"], options["session_token"]) == \
        (store.s3.env["AWS_ACCESS_KEY_ID"], store.s3.env["AWS_SECRET_ACCESS_KEY"], "a-session")
    assert options["allow_delayed_open"] is True  # small files: one PutObject (below)
    # The AWS CLI's own endpoint variable serves when TraceLab's is not set.
    monkeypatch.delenv("TRACELAB_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", store.s3.url)
    fs, _ = filesystem_from_uri(store.uri)
    assert fs.__reduce__()[1][0]["endpoint_override"] == store.s3.url.split("://", 1)[1]
    local, path = filesystem_from_uri(f"file://{store.home}")
    assert isinstance(local, pafs.LocalFileSystem) and path == str(store.home)


def test_a_data_file_is_published_by_one_put(store: Store, monkeypatch) -> None:
    """One request makes a file visible, whole: not create / upload part / complete."""
    with StallingProxy(store.s3, never) as proxy:
        monkeypatch.setenv("TRACELAB_S3_ENDPOINT", proxy.url)
        report = StoreWriter().write(make_runs(workflows=1, runs=2, events_per_run=5))
    data_key = report.files[0].split("/", 1)[1]
    on_data = [method for method, path in proxy.requests
               if unquote(path.split("?", 1)[0]).endswith(data_key)]
    assert on_data == ["PUT"]
    # and nothing else is put: the file and its event index (S3 needs no directory markers)
    assert sum(method == "PUT" for method, _ in proxy.requests) == 2


# -- atomic visibility --------------------------------------------------------------------------

WRITE_IN_CHILD = """
import sys
from pathlib import Path
import orjson
from tracelab.store.writer import StoreWriter
StoreWriter().write(orjson.loads(Path(sys.argv[1]).read_bytes()))
"""


def test_a_writer_killed_mid_upload_leaves_nothing_visible(store: Store, tmp_path) -> None:
    before = make_runs(workflows=1, runs=2, events_per_run=5)
    StoreWriter().write(before)
    batch = make_runs(workflows=1, runs=3, events_per_run=400, body_bytes=200)
    for event in batch:
        event["run_id"] = "late-" + event["run_id"]
    source = tmp_path / "batch.json"
    source.write_bytes(orjson.dumps(batch))
    with StallingProxy(store.s3, parquet_upload) as proxy:
        child = subprocess.Popen([sys.executable, "-c", WRITE_IN_CHILD, str(source)],
                                 env=store.env(proxy.url), cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert proxy.stalled.wait(60), child.stderr.read() if child.poll() is not None \
                else "the writer never uploaded"
            # Half the file is on the server: no reader sees any of it.
            assert len(store.data_keys()) == 1
            assert_stored_once(store, before)
        finally:
            kill(child)
    assert len(store.data_keys()) == 1
    assert_stored_once(store, before)
    # The batch redelivered (the ingester never acked it) is stored whole, once.
    assert StoreWriter().write(batch).written == len(batch)
    assert_stored_once(store, before + batch)


def test_a_file_that_fails_halfway_through_serializing_is_never_published(
        store: Store, monkeypatch) -> None:
    """Parquet output dies after its first bytes (out of memory, a bug in a codec): streamed
    straight into an S3 upload, closing the stream would publish the torn file."""
    import pyarrow.parquet as pq

    def torn(table, where, **kwargs):  # type: ignore[no-untyped-def]
        where.write(b"PAR1 and then nothing")
        raise OSError("the Parquet writer died halfway")

    kept = make_runs(workflows=1, runs=1, events_per_run=3)
    StoreWriter().write(kept)
    with monkeypatch.context() as patch, pytest.raises(OSError, match="died halfway"):
        patch.setattr(pq, "write_table", torn)
        StoreWriter().write(make_runs(workflows=1, runs=2, events_per_run=3)[3:])
    assert len(store.data_keys()) == 1
    assert_stored_once(store, kept)


def test_readers_listing_during_writes_only_ever_read_whole_files(store: Store) -> None:
    events = make_runs(workflows=1, runs=12, events_per_run=20)
    batches = [events[i:i + 20] for i in range(0, len(events), 20)]
    layout = resolve_layout()
    done = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            writer = StoreWriter(layout)
            for batch in batches:
                writer.write(batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen: list[int] = []
    while True:
        finished = done.is_set()
        files = layout.list_files()
        table = query.read_table(layout, [f.path for f in files])  # every column, every row
        assert table.num_rows == 20 * len(files)
        seen.append(table.num_rows)
        if finished:
            break
    thread.join()
    assert not failures, failures
    assert seen == sorted(seen) and seen[-1] == len(events)
    assert_stored_once(store, events)


# -- compaction ---------------------------------------------------------------------------------

def fill(store: Store, batches: int) -> list[dict]:
    events = make_runs(workflows=2, runs=4, events_per_run=8, days=2)
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)
    writer = StoreWriter()
    step = len(events) // batches
    for i in range(0, len(events), step):
        writer.write(shuffled[i:i + step])  # every batch touches every partition
    assert len(store.data_keys()) == 4 * batches
    return events


COMPACT = [sys.executable, "-m", "tracelab.cli", "compact"]


@pytest.mark.parametrize("where", ["merged file half uploaded", "old files being deleted"])
def test_compact_on_s3_killed_mid_merge_is_recovered(store: Store, where: str) -> None:
    events = fill(store, 4)
    stall_on = parquet_upload if where == "merged file half uploaded" else parquet_delete
    with StallingProxy(store.s3, stall_on) as proxy:
        child = subprocess.Popen(COMPACT, env=store.env(proxy.url), cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert proxy.stalled.wait(60), "the compaction never got there"
            assert len(store.journals()) == 1
            live = len(store.data_keys())
            # Either the merged file is not there yet, or it is and the journal hides the
            # files it replaces from TraceLab's readers: never an event twice.
            assert live == (16 if stall_on is parquet_upload else 17)
            assert query.store_stats()["events"] == len(events)
        finally:
            kill(child)
    assert query.store_stats()["events"] == len(events)
    report = compact()  # finishes the journal the killed one left, then merges what is left
    assert report.files_after == 4
    assert store.journals() == [] and len(store.data_keys()) == 4
    assert_stored_once(store, events)


def test_a_merged_file_whose_put_answer_was_lost_never_doubles_events(store: Store,
                                                                       monkeypatch) -> None:
    """The PUT of a merged file landed but its answer never came (retries too): the merged
    file is live, so the journal that hides the files it replaces must stay until finished."""
    events = fill(store, 2)
    with StallingProxy(store.s3, never, lose_answer_to=parquet_upload) as proxy:
        monkeypatch.setenv("TRACELAB_S3_ENDPOINT", proxy.url)
        with pytest.raises(OSError):
            compact()
    monkeypatch.setenv("TRACELAB_S3_ENDPOINT", store.s3.url)
    assert query.store_stats()["events"] == len(events)
    assert compact().files_after == 4
    assert store.journals() == []
    assert_stored_once(store, events)


def test_compact_on_s3_beside_a_live_writer_keeps_every_event_once(store: Store) -> None:
    events = fill(store, 4)
    more = make_runs(workflows=2, runs=6, events_per_run=8, days=2)
    for event in more:
        event["run_id"] = "more-" + event["run_id"]
    child = run_child(store, "from tracelab.store.compact import compact\n"
                             "for _ in range(3): compact()")
    writer = StoreWriter()
    for i in range(0, len(more), 24):
        writer.write(more[i:i + 24])
    assert child.wait(timeout=120) == 0, child.stderr.read().decode()
    assert store.journals() == []
    assert_stored_once(store, events + more)


# -- the ingester, and reading without TraceLab --------------------------------------------------

def test_tracelab_ingest_writes_the_stream_into_the_bucket(store: Store, redis_server) -> None:
    events = make_runs(workflows=2, runs=5, events_per_run=10)
    publish(redis_server.client(), events)
    done = subprocess.run([sys.executable, "-m", "tracelab.cli", "ingest", "--redis-url",
                           redis_server.url, "--once", "--batch", "40"], env=store.env(),
                          cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert b"stored" in done.stdout
    assert_stored_once(store, events)


def test_the_api_in_front_of_the_bucket_keeps_no_state_of_its_own(store: Store) -> None:
    """`tracelab serve` over the bucket answers from it, and a file another host puts after
    it started is in its next answer (so N of them behind a balancer answer alike)."""
    events = make_runs(workflows=1, runs=3, events_per_run=4)
    StoreWriter().write(events)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tracelab.cli", "serve", "--no-ui",
                               "--port", str(port)], env=store.env(), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        def runs() -> dict[str, int]:
            page = client.get("/api/workflows/wf-0/executions")
            assert page.status_code == 200, page.text
            return {row["run_id"]: row["events"] for row in page.json()["executions"]}

        wait_until_serving(client, server)
        assert runs() == {f"wf0-run-{r:04d}": 4 for r in range(3)}
        one = client.get(f"/api/events/{events[5]['event_id']}")
        assert one.status_code == 200 and one.json()["run_id"] == events[5]["run_id"]
        assert client.get("/metrics").status_code == 200
        late = make_runs(workflows=1, runs=4, events_per_run=2)[-2:]  # run 3, from elsewhere
        StoreWriter().write(late)
        assert runs() == {**{f"wf0-run-{r:04d}": 4 for r in range(3)}, "wf0-run-0003": 2}
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_until_serving(client: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if server.poll() is not None:
            raise AssertionError(server.stderr.read().decode())
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        threading.Event().wait(0.05)
    raise AssertionError("tracelab serve did not answer within 30 s")


EMBEDDED = """
import tracelab
tracelab.init(workflow_name="embedded", service_name="notebook", run_id="run-e")

@tracelab.trace
def step(n):
    return n

for n in range(3):
    step(n)
assert tracelab.flush(10)
tracelab.shutdown()
"""


def test_embedded_mode_records_into_the_bucket(store: Store) -> None:
    """No Redis: the recorder's local spool is folded into the S3 store."""
    env = store.env()
    env.pop("TRACELAB_REDIS_URL", None)
    subprocess.run([sys.executable, "-c", EMBEDDED], env=env, cwd=ROOT, check=True,
                   timeout=120)
    runs = tl.executions("embedded").df
    assert list(runs["run_id"]) == ["run-e"] and list(runs["events"]) == [3]
    assert store.data_keys()


def test_duckdb_reads_the_bucket_directly_with_the_same_counts(store: Store) -> None:
    events = make_runs(workflows=2, runs=5, events_per_run=6, days=2, error_every=7)
    writer = StoreWriter()
    for i in range(0, len(events), 20):
        writer.write(events[i:i + 20])
    subprocess.run(COMPACT + ["--workflow", "wf-0"], env=store.env(), cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    events_table = store.outside_table()  # noqa: F841 - DuckDB finds it by its name
    rows = duckdb.sql("""
        SELECT workflow, count(*) AS events, count(DISTINCT run_id) AS runs,
               count(DISTINCT date) AS days
        FROM events_table GROUP BY workflow ORDER BY workflow""").fetchall()
    expected = []
    for workflow in ("wf-0", "wf-1"):
        df = tl.executions(workflow).df
        expected.append((workflow, int(df["events"].sum()), len(df), 2))
    assert rows == expected
    assert sum(r[1] for r in rows) == len(events)
