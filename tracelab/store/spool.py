"""Folding the embedded-mode spool (`$TRACELAB_HOME/spool/`) into the Parquet store.

The spool format is fixed in spec/README.md ("Transport"). Folding runs under one host-wide
lock, so there is one writer at a time, and is crash-safe without a transaction:

- For each spool file, how far it has been folded is kept in `spool/.folded/<stem>` (a byte
  offset, replaced atomically). Only `\\n`-terminated lines beyond it are read, and a line is
  always taken whole, whatever its size: it is stored or dead-lettered, never split.
- Events go to the store through `StoreWriter`, durably, *before* the offset moves. A fold
  killed in between re-reads those lines next time and the writer's `event_id` dedupe drops
  them: nothing lost, nothing doubled. The same makes a fold safe to stop between chunks
  (`deadline`), so a traced program's `flush()` never waits on folding.
- Whether a `.jsonl.open` file's writer is still there is asked of the kernel, not of PIDs
  (which mean nothing across containers sharing `$TRACELAB_HOME`): a writer holds an `flock`
  on its file for as long as it may append. If an exclusive non-blocking `flock` succeeds,
  nobody holds it and the file is complete, like a `.jsonl`. A complete file is deleted once
  folded to its end; a crashed writer's unterminated last line is dead-lettered, never
  guessed at.
- Lines that are not valid events, are over `MAX_EVENT_BYTES`, or that the store refuses go
  to `spool/dead/<stem>.jsonl` with the reason and the line as it was read (never
  re-serialized); they never stop the rest of the file, and dead-lettering cannot raise.
"""
from __future__ import annotations

import base64
import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from tracelab.events import MAX_EVENT_BYTES, validate
from tracelab.store.layout import StoreLayout, resolve_layout
from tracelab.store.locks import FileLock, LockTimeout
from tracelab.store.writer import StoreWriter

log = logging.getLogger("tracelab.spool")

OPEN_SUFFIX = ".jsonl.open"
DONE_SUFFIX = ".jsonl"
CHUNK_BYTES = 8 * 1024 * 1024
# A dead letter keeps the whole line; only when even that fails is a repr kept, this long.
_REPR_CHARS = 64 * 1024

_WRITERS: dict[str, StoreWriter] = {}
_WRITERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    stem: str          # the name without `.open`: stable across the writer's final rename
    complete: bool


def spool_dir(home: Path) -> Path:
    return home / "spool"


def writer_gone(path: Path) -> bool:
    """True when no process holds an `flock` on `path`: its writer closed it or died.

    Writers hold a lock on their `.jsonl.open` file for as long as they may append (see
    `tracelab.sdk.sinks.SpoolSink`); the kernel drops it when they exit, however they exit,
    and sees it from every PID namespace sharing the filesystem. False (still live) when the
    file cannot be opened to ask: renamed since listing, or not ours to read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the probe's own lock
    return True


def list_spool(home: Path) -> list[SpoolFile]:
    """Spool files in name (= time) order, each marked complete or still being written."""
    directory = spool_dir(home)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    files = []
    for name in names:
        if name.startswith("."):
            continue
        if name.endswith(OPEN_SUFFIX):
            path = directory / name
            files.append(SpoolFile(path, name[: -len(".open")], complete=writer_gone(path)))
        elif name.endswith(DONE_SUFFIX):
            files.append(SpoolFile(directory / name, name, complete=True))
    return files


def _offset_path(home: Path, stem: str) -> Path:
    return spool_dir(home) / ".folded" / stem


def _read_offset(home: Path, stem: str) -> int:
    try:
        return int(_offset_path(home, stem).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_offset(home: Path, stem: str, offset: int) -> None:
    path = _offset_path(home, stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{stem}.tmp")
    with open(tmp, "w") as f:
        f.write(str(offset))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def has_pending(home: Path) -> bool:
    """True when some spool file holds bytes not folded yet (cheap: listing and stat only)."""
    for spool in list_spool(home):
        size = _size(spool.path)
        if size < 0:
            continue
        if spool.complete or size > _read_offset(home, spool.stem):
            return True
    return False


def fold_spool(home: Path | str | None = None, *, layout: StoreLayout | None = None,
               timeout: float = 120.0, deadline: float | None = None) -> int:
    """Fold every unfolded spool event into the store; returns how many events were new.

    Safe to call from any number of processes at once (they take turns on a lock, waiting up
    to `timeout` seconds for it, else `LockTimeout`) and safe to kill at any moment. Without a
    `deadline`, every event spooled before the call is queryable when it returns. With one (a
    `time.monotonic()` value) it stops between chunks once the deadline has passed and leaves
    the rest, recorded by offset, to the next fold.
    """
    layout = layout or resolve_layout(home=home)
    home_path = Path(home).expanduser() if home is not None else layout.home
    with FileLock(home_path / "locks" / "spool-fold.lock", timeout=timeout):
        writer = _writer(layout)
        stored = 0
        for spool in list_spool(home_path):
            if deadline is not None and time.monotonic() >= deadline:
                break
            stored += _fold_file(home_path, writer, spool, deadline)
        _forget_orphan_offsets(home_path)
        return stored


def fold_within(home: Path | str, deadline: float) -> int:
    """What a traced program's `flush()` calls: fold what can be folded by `deadline`, never
    wait for another process's fold (it leaves the rest to the next reader), never raise."""
    try:
        return fold_spool(home, timeout=0, deadline=deadline)
    except LockTimeout:
        return 0  # someone else is folding: the next reader folds what they did not


def fold_if_pending(layout: StoreLayout) -> int:
    """What readers call before answering: fold if there is anything to fold, never raise."""
    try:
        if not has_pending(layout.home):
            return 0
        return fold_spool(layout.home, layout=layout)
    except Exception as exc:  # a reader must still answer from what is already stored
        log.warning("could not fold the spool at %s: %s", spool_dir(layout.home), exc)
        return 0


def _writer(layout: StoreLayout) -> StoreWriter:
    with _WRITERS_LOCK:
        key = layout.uri or layout.root
        writer = _WRITERS.get(key)
        if writer is None:
            writer = _WRITERS[key] = StoreWriter(layout, auto_compact=True)
        return writer


def _fold_file(home: Path, writer: StoreWriter, spool: SpoolFile,
               deadline: float | None = None) -> int:
    offset = _read_offset(home, spool.stem)
    stored = 0
    try:
        f = open(spool.path, "rb")
    except FileNotFoundError:
        # The writer renamed `.open` to `.jsonl` since we listed: the next listing has it.
        return 0
    except OSError as exc:
        log.warning("cannot read spool file %s: %s", spool.path, exc)
        return 0
    with f:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return stored  # the offset says where the next fold goes on
            chunk = _read_lines(f, offset)
            if not chunk:
                break
            stored += _fold_chunk(home, writer, spool.stem, chunk, offset)
            offset += len(chunk)
            _write_offset(home, spool.stem, offset)
        if spool.complete:
            f.seek(offset)
            tail = f.read()
            if tail:
                _dead_letter(home, spool.stem, [(tail, "unterminated last line: the writer "
                                                 "stopped mid-write", offset)])
    if spool.complete:
        try:
            spool.path.unlink()
        except FileNotFoundError:
            pass
        _offset_path(home, spool.stem).unlink(missing_ok=True)
    return stored


def _read_lines(f, offset: int) -> bytes:
    """The complete (`\\n`-terminated) lines from `offset`: about a chunk of them, or one
    line whole however long it is; b"" when there is no complete line."""
    f.seek(offset)
    data = f.read(CHUNK_BYTES)
    end = data.rfind(b"\n")
    if end >= 0:
        return data[: end + 1]
    if len(data) < CHUNK_BYTES:
        return b""  # an unterminated tail: the writer is mid-write, or it crashed
    # One line longer than a chunk: find its end without holding it, then read it whole.
    scanned = offset + len(data)
    while True:
        piece = f.read(CHUNK_BYTES)
        if not piece:
            return b""
        newline = piece.find(b"\n")
        if newline >= 0:
            f.seek(offset)
            return f.read(scanned + newline + 1 - offset)
        scanned += len(piece)


def _fold_chunk(home: Path, writer: StoreWriter, stem: str, chunk: bytes, offset: int) -> int:
    """Store the valid events of `chunk` (whole lines starting at `offset`), dead-letter the
    rest; returns how many events were new."""
    events: list[dict] = []
    origin: dict[int, tuple[bytes, int]] = {}  # id(event) -> (its line, its offset)
    dead: list[tuple[bytes, str, int]] = []
    line_offset = offset
    for line in chunk.split(b"\n")[:-1]:
        event, reason = _parse_line(line)
        if reason is None:
            events.append(event)
            origin[id(event)] = (line, line_offset)
        elif line.strip():
            dead.append((line, reason, line_offset))
        line_offset += len(line) + 1
    stored = 0
    if events:
        written, rejected = _store(writer, events)
        stored += written
        for bad_event, reason in rejected:
            line, at = origin.get(id(bad_event), (b"", offset))
            dead.append((line, reason, at))
    if dead:
        _dead_letter(home, stem, dead)
    return stored


def _store(writer: StoreWriter, events: list[dict]) -> tuple[int, list[tuple[dict, str]]]:
    """Write `events`; returns (new events written, [(event, reason)] the store refused).

    A store that raises on one poison event instead of reporting it would stop every later
    fold at the same line, so then the events are written one by one and those that still
    raise are refused. An `OSError` is the store's own trouble (disk, lock), not the event's:
    it propagates, and the offset stays put for the next fold.
    """
    try:
        report = writer.write(events)
        return report.written, list(report.rejected)
    except OSError:
        raise
    except Exception:
        pass
    written, rejected = 0, []
    for event in events:
        try:
            report = writer.write([event])
        except OSError:
            raise
        except Exception as exc:
            rejected.append((event, f"cannot be stored: {_describe(exc)}"))
            continue
        written += report.written
        rejected.extend(report.rejected)
    return written, rejected


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:1000]
    except Exception:  # an exception whose str() raises
        return type(exc).__name__


def _parse_line(line: bytes) -> tuple[dict | None, str | None]:
    if not line.strip():
        return None, "empty line"
    if len(line) > MAX_EVENT_BYTES:
        return None, (f"oversized: {len(line)} bytes, the limit is {MAX_EVENT_BYTES} "
                      "(MAX_EVENT_BYTES)")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return None, "not UTF-8"
        return None, f"not JSON: {exc}"
    if not isinstance(obj, dict):
        return None, f"not a JSON object but {type(obj).__name__}"
    problems = validate(obj)
    if problems:
        return None, "; ".join(problems)
    return obj, None


def _dead_letter(home: Path, stem: str, dead: list[tuple[bytes, str, int]]) -> None:
    """Append one record per bad line to `spool/dead/<stem>`: the reason and the line as it
    was read. Building a record cannot raise (`_dead_record`); only the disk can."""
    directory = spool_dir(home) / "dead"
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for raw, reason, offset in dead:
        lines.append(_dead_record(stem, raw, reason, offset))
        log.warning("spool %s offset %d: dead-lettered: %.500s", stem, offset, reason)
    fd = os.open(directory / stem, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = memoryview(b"".join(lines))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _dead_record(stem: str, raw: bytes, reason: str, offset: int) -> bytes:
    """One dead-letter line: `{reason, file, offset, encoding, line}` where `line` is the
    original bytes as UTF-8 text or base64; never re-serializes a parsed event."""
    try:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode(), "base64"
        return orjson.dumps({"reason": str(reason), "file": stem, "offset": offset,
                             "encoding": encoding, "line": text}) + b"\n"
    except Exception as exc:  # nothing may stop the line; keep what can be kept
        return orjson.dumps({"reason": f"{reason!r:.1000}", "file": stem, "offset": offset,
                             "encoding": "repr", "line": repr(raw[:_REPR_CHARS]),
                             "note": f"dead letter itself failed: {type(exc).__name__}"}) + b"\n"


def _forget_orphan_offsets(home: Path) -> None:
    directory = spool_dir(home) / ".folded"
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    spool = spool_dir(home)
    for name in names:
        if name.startswith("."):
            continue
        if not (spool / name).exists() and not (spool / f"{name}.open").exists():
            (directory / name).unlink(missing_ok=True)
