"""pytest plugin (entry point `pytest11`): replay a recording inside a test, or record one.

```python
@pytest.mark.tracelab(recording="recordings/refund.jsonl", faults=None, on_miss="fail")
def test_refund(tracelab_replay):
    assert run_agent() == "refunded"
    assert tracelab_replay.misses == []
```

- Replay (the default): the test's outbound calls are answered from the recording through
  `tracelab.replay(recording, faults=..., on_miss=...)`; the `tracelab_replay` fixture is the
  `tracelab.replay.Replay` result. With `on_miss="fail"` a call the recording does not hold
  fails the test with the matcher's explanation, even when the code under test swallowed the
  library's connection error. While the replay runs, a socket connection to anything but a
  loopback address (or a Unix socket) is refused with `NetworkBlocked` and also fails the test
  (pytest-recording's `--block-network`): local test servers stay reachable, the internet does
  not. The block is on by default with `on_miss="fail"` and off with `passthrough`/`record`,
  which ask for live calls; `block_network=` overrides it.
- `pytest --tracelab-record`: the marked tests run live under `tracelab.init()` in embedded
  mode into a temporary home, and when the test passed its run is exported to the recording
  path (JSON Lines, as `tracelab export` writes it). A failed test never writes (nor replaces)
  its recording. `tracelab_replay` is None then, and `faults=` does not apply.

Relative `recording` (and fault file) paths resolve from the test file's folder. The replay's
own run is recorded into a temporary TRACELAB_HOME, so tests never write into the user's store.
Everything TraceLab is imported lazily: this module is loaded by every pytest run of a project
that has TraceLab installed, so it must cost nothing when no test is marked.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MARKER = "tracelab"
MARKER_KEYS = ("recording", "faults", "on_miss", "ignore", "headers", "speed", "block_network")
MARKER_HELP = (
    "tracelab(recording, faults=None, on_miss='fail', ignore=(), headers=(), speed=0, "
    "block_network=None): answer the test's outbound calls from the recording (a JSON Lines "
    "file, relative to the test file's folder); faults= are fault rules (a YAML/JSON file, "
    "rule objects or text); on_miss='fail' fails the test on a call the recording lacks; "
    "connections to non-loopback addresses are refused while it replays. "
    "`pytest --tracelab-record` records the recording instead (kept only when the test passes)."
)
_ENV_CLEARED = ("TRACELAB_REDIS_URL", "TRACELAB_STORE", "TRACELAB_REPLAY", "TRACELAB_DISABLED")

_STATE = pytest.StashKey["_ReplayState"]()
_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


class MarkerError(ValueError):
    """A `@pytest.mark.tracelab(...)` that cannot be used: the message says why."""


class NetworkBlocked(ConnectionRefusedError):
    """A connection to a non-loopback address during a replay (an OSError, so HTTP libraries
    report it as their own connection error; the test fails on it regardless)."""


# -- the marker ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """One test's `@pytest.mark.tracelab(...)`, paths resolved from the test file's folder."""

    recording: Path
    faults: Any = None
    on_miss: str = "fail"
    ignore: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    speed: float = 0.0
    block_network: bool = True


def settings_of(item: pytest.Item) -> Settings | None:
    """The item's closest `tracelab` marker as `Settings`; None when unmarked.

    Raises `MarkerError` for a marker without a recording or with an unknown key.
    """
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return None
    kwargs = dict(marker.kwargs)
    if marker.args:
        if len(marker.args) > 1 or "recording" in kwargs:
            raise MarkerError(f"{item.nodeid}: @pytest.mark.tracelab takes one recording "
                                    f"(positional or recording=), got {marker.args!r}")
        kwargs["recording"] = marker.args[0]
    unknown = sorted(set(kwargs) - set(MARKER_KEYS))
    if unknown:
        raise MarkerError(f"{item.nodeid}: @pytest.mark.tracelab: unknown key(s) "
                                f"{', '.join(unknown)}; known: {', '.join(MARKER_KEYS)}")
    recording = kwargs.pop("recording", None)
    if not isinstance(recording, (str, os.PathLike)) or not str(recording):
        raise MarkerError(f"{item.nodeid}: @pytest.mark.tracelab needs recording=<path "
                                f"of a .jsonl file>, got {recording!r}")
    folder = Path(item.path).parent
    on_miss = kwargs.get("on_miss", "fail")
    block = kwargs.pop("block_network", None)
    return Settings(
        recording=_resolve(folder, recording),
        faults=_resolve_faults(folder, kwargs.get("faults")),
        on_miss=on_miss,
        ignore=tuple(kwargs.get("ignore", ())),
        headers=tuple(kwargs.get("headers", ())),
        speed=float(kwargs.get("speed", 0.0)),
        block_network=(on_miss == "fail") if block is None else bool(block),
    )


def _resolve(folder: Path, path: str | os.PathLike[str]) -> Path:
    return (folder / Path(path).expanduser()).resolve()


def _resolve_faults(folder: Path, faults: Any) -> Any:
    """A fault file named relative to the test's folder (`path`, `@path`, a `Path`) made
    absolute; rule text, rule objects and `FaultSet`s pass through untouched."""
    if isinstance(faults, os.PathLike):
        return _resolve(folder, faults)
    if isinstance(faults, str) and "\n" not in faults:
        name = faults[1:] if faults.startswith("@") else faults
        if faults.startswith("@") or name.lower().endswith((".yaml", ".yml", ".json")):
            return _resolve(folder, name)
    return faults


# -- the network guard --------------------------------------------------------------------

@dataclass
class NetworkGuard:
    """While installed, `socket.socket.connect`/`connect_ex` to a non-loopback address raise
    `NetworkBlocked` (nothing is resolved: a host name other than localhost is refused as is).
    Process-wide, like the replay it guards; every refused address is kept in `blocked`."""

    why: str
    blocked: list[str] = field(default_factory=list)
    _saved: dict[str, Callable[..., Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> None:
        guard = self
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
        self._saved = {"connect": connect, "connect_ex": connect_ex}

        def guarded_connect(sock: socket.socket, address: Any) -> None:
            __tracebackhide__ = True
            guard.check(sock, address)
            return connect(sock, address)

        def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
            __tracebackhide__ = True
            guard.check(sock, address)
            return connect_ex(sock, address)

        socket.socket.connect = guarded_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]

    def uninstall(self) -> None:
        for name, original in self._saved.items():
            setattr(socket.socket, name, original)
        self._saved = {}

    def check(self, sock: socket.socket, address: Any) -> None:
        __tracebackhide__ = True
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or _is_local(address):
            return
        where = _describe_address(address)
        with self._lock:
            self.blocked.append(where)
        raise NetworkBlocked(f"tracelab: network blocked during replay: tried to connect to "
                             f"{where}; {self.why}")


def _is_local(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) and address else address
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    return ip.is_loopback or ip.is_unspecified


def _describe_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


# -- replay and record --------------------------------------------------------------------

@dataclass
class _ReplayState:
    """What the call report needs to fail a test: the replay and the guard of this test."""

    settings: Settings
    replay: Any
    guard: NetworkGuard | None

    def problems(self) -> str:
        """The misses and refused connections, explained; empty when there are none."""
        lines: list[str] = []
        misses = list(self.replay.misses) if self.settings.on_miss == "fail" else []
        if misses:
            lines.append(f"tracelab: {len(misses)} call(s) not in the recording "
                         f"{self.settings.recording} (on_miss='fail'):")
            lines.extend(f"- {miss.get('message') or miss.get('call')}" for miss in misses)
        blocked = list(self.guard.blocked) if self.guard is not None else []
        if blocked:
            lines.append(f"tracelab: network blocked during replay: {len(blocked)} connection(s) "
                         f"to non-loopback addresses refused: {', '.join(blocked)}")
        return "\n".join(lines)


def _temporary_home(request: pytest.FixtureRequest) -> Path:
    factory = request.getfixturevalue("tmp_path_factory")
    return Path(factory.mktemp("tracelab-home", numbered=True))


def _isolated(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Embedded mode into `home`: no Redis, no other store, no replay set from outside."""
    monkeypatch.setenv("TRACELAB_HOME", str(home))
    for name in _ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)


def _replaying(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Any]:
    import tracelab.sdk.recorder as recorder
    from tracelab.replay import replay
    from tracelab.replay.recording import RecordingError

    if not settings.recording.is_file():
        pytest.fail(f"tracelab: no recording at {settings.recording}; run "
                    f"`pytest --tracelab-record` to record it", pytrace=False)
    options: dict[str, Any] = {"on_miss": settings.on_miss, "speed": settings.speed,
                               "ignore": settings.ignore, "headers": settings.headers}
    if settings.faults is not None:
        options["faults"] = settings.faults
    with pytest.MonkeyPatch.context() as monkeypatch:
        if recorder.current() is None:  # the replay's own run: into a throwaway home
            _isolated(monkeypatch, _temporary_home(request))
        try:
            result = replay(str(settings.recording), **options)
        except (RecordingError, ValueError, TypeError) as exc:
            problem = f"tracelab: cannot replay {settings.recording}: {exc}"
        else:
            problem = ""
        if problem:
            pytest.fail(problem, pytrace=False)
        guard = None
        if settings.block_network:
            guard = NetworkGuard(f"only loopback addresses are reachable while the test "
                                 f"replays {settings.recording.name} (record the call with "
                                 f"`pytest --tracelab-record`, or pass block_network=False)")
            guard.install()
        request.node.stash[_STATE] = _ReplayState(settings, result, guard)
        try:
            yield result
        finally:
            if guard is not None:
                guard.uninstall()
            result.close()


def _recording(request: pytest.FixtureRequest, settings: Settings) -> Iterator[None]:
    import tracelab.sdk.recorder as recorder
    from tracelab.events import new_event_id

    if recorder.current() is not None:
        pytest.fail("tracelab: --tracelab-record starts its own tracelab.init(), but one is "
                    "already active in this process (a conftest or plugin called it); record "
                    "without it", pytrace=False)
    home = _temporary_home(request)
    run_id = f"pytest-{new_event_id()}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolated(monkeypatch, home)
        # An init() made by the code under test lands in the same run.
        monkeypatch.setenv("TRACELAB_RUN_ID", run_id)
        workflow = os.environ.get("TRACELAB_WORKFLOW_NAME") or "pytest"
        monkeypatch.setenv("TRACELAB_WORKFLOW_NAME", workflow)
        recorder.init(workflow, run_id=run_id)
        try:
            yield None
        finally:
            recorder.shutdown()
        report = request.node.stash.get(_CALL_REPORT, None)
        if report is not None and report.passed:
            _export(home, run_id, settings.recording)


def _export(home: Path, run_id: str, path: Path) -> None:
    """The run as a recording at `path` (atomically): what `tracelab export` writes."""
    from tracelab.replay.recording import run_events, write_recording
    from tracelab.store.layout import resolve_layout
    from tracelab.store.spool import fold_spool

    layout = resolve_layout(str(home / "store"), home)
    fold_spool(home, layout=layout)
    try:
        events = run_events(run_id, layout=layout)
    except KeyError:
        pytest.fail(f"tracelab: the test passed but made no call TraceLab records; "
                    f"{path} was not written", pytrace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_recording(events, path)


# -- pytest hooks and fixtures ------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tracelab", "TraceLab record and replay")
    group.addoption("--tracelab-record", action="store_true", default=False,
                    help="run tests marked @pytest.mark.tracelab live and write their "
                         "recordings (only for tests that pass) instead of replaying them")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report: pytest.TestReport = yield
    if report.when != "call":
        return report
    item.stash[_CALL_REPORT] = report
    state = item.stash.get(_STATE, None)
    problems = state.problems() if state is not None else ""
    if problems and not report.skipped:
        if report.failed and hasattr(report.longrepr, "addsection"):
            report.longrepr.addsection("tracelab replay", problems)
        elif report.failed:
            report.sections.append(("tracelab replay", problems))
        else:
            report.outcome = "failed"
            report.longrepr = problems
    return report


@pytest.fixture(autouse=True)
def _tracelab_marker(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Replays (or records) around every test marked `@pytest.mark.tracelab`; else nothing."""
    try:
        settings = settings_of(request.node)
    except MarkerError as exc:
        pytest.fail(str(exc), pytrace=False)
    if settings is None:
        yield None
    elif request.config.getoption("tracelab_record"):
        yield from _recording(request, settings)
    else:
        yield from _replaying(request, settings)


@pytest.fixture
def tracelab_replay(request: pytest.FixtureRequest, _tracelab_marker: Any) -> Any:
    """The `tracelab.replay.Replay` of this test's `@pytest.mark.tracelab` (hits, misses,
    unused, calls...); None under `--tracelab-record`."""
    if request.node.get_closest_marker(MARKER) is None:
        pytest.fail("tracelab: the tracelab_replay fixture needs "
                    "@pytest.mark.tracelab(recording=...) on the test", pytrace=False)
    return _tracelab_marker
