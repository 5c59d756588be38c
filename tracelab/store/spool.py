"""Folding the embedded-mode spool (`$TRACELAB_HOME/spool/`) into the Parquet store.

The spool format is fixed in spec/README.md ("Transport"). Folding runs under one host-wide
lock, so there is one writer at a time, and is crash-safe without a transaction:

- For each spool file, how far it has been folded is kept in `spool/.folded/<stem>` (a byte
  offset, replaced atomically). Only `\\n`-terminated lines beyond it are read.
- Events go to the store through `StoreWriter`, durably, *before* the offset moves. A fold
  killed in between re-reads those lines next time and the writer's `event_id` dedupe drops
  them: nothing lost, nothing doubled.
- A complete file (`.jsonl`, or `.jsonl.open` whose writer pid is dead) is deleted once folded
  to its end; a crashed writer's unterminated last line is dead-lettered, never guessed at.
- Lines that are not valid events go to `spool/dead/<stem>.jsonl` with the reason; they never
  stop the rest of the file.
"""
from __future__ import annotations

import base64
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson

from tracelab.store.layout import StoreLayout, resolve_layout
from tracelab.store.locks import FileLock
from tracelab.store.writer import StoreWriter

log = logging.getLogger("tracelab.spool")

OPEN_SUFFIX = ".jsonl.open"
DONE_SUFFIX = ".jsonl"
CHUNK_BYTES = 8 * 1024 * 1024

_WRITERS: dict[str, StoreWriter] = {}
_WRITERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    stem: str          # the name without `.open`: stable across the writer's final rename
    complete: bool


def spool_dir(home: Path) -> Path:
    return home / "spool"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
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
            stem = name[: -len(".open")]
            try:
                pid = int(stem.split("-")[1])
            except (IndexError, ValueError):
                pid = -1
            files.append(SpoolFile(directory / name, stem, complete=not _pid_alive(pid)))
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
               timeout: float = 120.0) -> int:
    """Fold every unfolded spool event into the store; returns how many events were new.

    Safe to call from any number of processes at once (they take turns on a lock) and safe to
    kill at any moment. When it returns, every event spooled before the call is queryable.
    """
    layout = layout or resolve_layout(home=home)
    home_path = Path(home).expanduser() if home is not None else layout.home
    with FileLock(home_path / "locks" / "spool-fold.lock", timeout=timeout):
        writer = _writer(layout)
        stored = 0
        for spool in list_spool(home_path):
            stored += _fold_file(home_path, writer, spool)
        _forget_orphan_offsets(home_path)
        return stored


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


def _fold_file(home: Path, writer: StoreWriter, spool: SpoolFile) -> int:
    from tracelab.events import validate

    offset = _read_offset(home, spool.stem)
    stored = 0
    try:
        f = open(spool.path, "rb")
    except FileNotFoundError:
        # The writer renamed `.open` to `.jsonl` since we listed: the next listing has it.
        return 0
    with f:
        f.seek(offset)
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) < CHUNK_BYTES:
                    break  # an unterminated tail: the writer is mid-write, or it crashed
                end = len(data) - 1  # one absurdly long line: take it whole, validation decides
            chunk = data[: end + 1]
            events, dead = [], []
            line_offset = offset
            for line in chunk.split(b"\n")[:-1]:
                event, reason = _parse_line(line, validate)
                if reason is None:
                    events.append(event)
                elif line.strip():
                    dead.append((line, reason, line_offset))
                line_offset += len(line) + 1
            if events:
                report = writer.write(events)
                stored += report.written
                for bad_event, reason in report.rejected:
                    dead.append((orjson.dumps(bad_event), reason, offset))
            if dead:
                _dead_letter(home, spool.stem, dead)
            offset += len(chunk)
            _write_offset(home, spool.stem, offset)
            f.seek(offset)
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


def _parse_line(line: bytes, validate) -> tuple[dict | None, str | None]:
    if not line.strip():
        return None, "empty line"
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
    directory = spool_dir(home) / "dead"
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for raw, reason, offset in dead:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode(), "base64"
        lines.append(orjson.dumps({"reason": reason, "file": stem, "offset": offset,
                                   "encoding": encoding, "line": text}) + b"\n")
        log.warning("spool %s offset %d: dead-lettered: %s", stem, offset, reason)
    fd = os.open(directory / stem, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)


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
