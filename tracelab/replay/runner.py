"""`run_replay`: run a command again with every outbound call answered from a recording.

The runner owns the process side of a replay; answering is done elsewhere. It loads the
recording (a file, or a run id exported to a temporary file so every child can read it),
starts the replay proxy (`tracelab.proxy.replay`) on a free loopback port, runs the command
with the environment protocol of the replay (TRACELAB_REPLAY*, the new run's identity, the
proxy in HTTP(S)_PROXY and the CA in the trust variables), then stops the proxy and sums the
report lines every replaying process appended (the Python SDK answers its calls in-process,
the proxy answers the rest; each reports only what it answered, so nothing is counted twice).

With fault rules (`faults=`, `tracelab replay --faults FILE`) the file is validated before
anything runs (every reason listed, exit status 2), then handed to both answering sides by its
absolute path: TRACELAB_REPLAY_FAULTS=@path to the command, `--faults path` to the proxy. The
report lines' call logs are merged by start time into `ReplayResult.calls`, from which the
resilience report (`tracelab.replay.resilience`) is computed and printed before the summary.

`verdict` is the one computation behind both the summary line and the exit status.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tracelab.replay.session import UNANSWERED_KINDS

ON_MISS_MODES = ("fail", "passthrough", "record")
EXIT_MISSES = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 127
_PROXY_START_TIMEOUT = 30.0
_PROXY_STOP_TIMEOUT = 15.0
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
# OpenSSL-based tools and Python, requests, Node, curl (which ignores SSL_CERT_FILE).
_CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")


# Recorded events no replaying process answers: what the SDK never answers (the program's own
# function spans) and WebSocket connection summaries (not replayed). The rest counts in M.
NOT_REPLAYED_KINDS = UNANSWERED_KINDS | {"websocket"}


def replayable(event: Mapping[str, Any]) -> bool:
    """Whether a recorded event is a call some replaying process can answer."""
    return event.get("kind") not in NOT_REPLAYED_KINDS and isinstance(event.get("request"), dict)


class ReplayInputError(ValueError):
    """Bad input to a replay (a flag, the source, no command): exit status 2."""


@dataclass
class Tally:
    """What the report lines of every replaying process add up to."""

    total: int  # replayable calls in the recording (M)
    hits: set[str] = field(default_factory=set)
    misses: list[dict[str, str]] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)  # the sources that reported
    calls: list[dict[str, Any]] = field(default_factory=list)  # the merged call log, by `t`
    logged: bool = False  # some report line carried a call log ("calls")
    faulted: int = 0  # calls answered with an injected fault: neither hits nor misses

    @property
    def unused(self) -> int:
        return self.total - len(self.hits)

    @property
    def summary(self) -> str:
        return (f"replayed {len(self.hits)}/{self.total} calls, {len(self.misses)} misses, "
                f"{self.unused} unused recordings")


@dataclass
class ReplayResult:
    exit_code: int
    summary: str
    execution: str | None  # the new run id
    misses: list[dict[str, str]]
    reason: str = ""
    command_exit: int | None = None
    tally: Tally | None = None
    # The call log (`call_summary` per event) by `t`; None when no process reported one.
    calls: list[dict[str, Any]] | None = None
    duration_ms: float | None = None  # the command's wall time
    faulted: int = 0
    resilience: list[dict[str, Any]] | None = None  # `resilience.analyse` rows, with faults


def verdict(command_exit: int | None, tally: Tally, proxy_reported: bool = True) -> tuple[int, str]:
    """The exit status and its reason: 0 only when the command exited 0 and nothing missed.

    A failing command gives its own exit status (128+N for a signal, as a shell would); a
    command that succeeded with misses gives 1; a proxy that never reported gives 1 as well
    (its calls cannot be vouched for).
    """
    missed = len(tally.misses)
    if command_exit is None:
        return EXIT_NOT_FOUND, "the command could not be started"
    if command_exit != 0:
        code = 128 - command_exit if command_exit < 0 else command_exit
        extra = f" (and {missed} calls missed the recording)" if missed else ""
        return code, f"the command exited with status {command_exit}{extra}"
    if missed:
        return EXIT_MISSES, f"{missed} calls missed the recording"
    if not proxy_reported:
        return EXIT_MISSES, "the replay proxy did not report what it answered"
    return 0, "ok"


def tally_reports(lines: Iterable[bytes | str], calls: Iterable[str]) -> Tally:
    """Sum the report lines; hits count once per recorded call, whoever answered it."""
    known = set(calls)
    tally = Tally(total=len(known))
    for line in lines:
        if not line.strip():
            continue
        try:
            report = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a process killed mid-write: the rest still counts
        if not isinstance(report, dict):
            continue
        tally.reports.append(str(report.get("source")))
        tally.hits.update(h for h in report.get("hits") or () if h in known)
        tally.misses.extend(m for m in report.get("misses") or () if isinstance(m, dict))
        tally.passthrough.extend(str(p) for p in report.get("passthrough") or ())
        tally.logged = tally.logged or isinstance(report.get("calls"), list)
        calls = [c for c in report.get("calls") or () if isinstance(c, dict)]
        tally.calls.extend(calls)
        faulted = report.get("faulted")
        tally.faulted += faulted if isinstance(faulted, int) and not isinstance(faulted, bool) \
            else sum(1 for c in calls if c.get("fault"))
    # Stable: one process's own order is kept among calls that started in the same instant.
    tally.calls.sort(key=lambda c: (not isinstance(c.get("t"), (int, float)),
                                    c.get("t") if isinstance(c.get("t"), (int, float)) else 0))
    return tally


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _user_tags() -> dict[str, Any]:
    raw = os.environ.get("TRACELAB_TAGS")
    if not raw:
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def child_env(base: Mapping[str, str], *, recording: Path, report: Path, on_miss: str,
              speed: float, ignore: Sequence[str], headers: Sequence[str], workflow: str,
              run_id: str, replay_of: str, proxy_url: str, ca_cert: Path,
              faults: Path | None = None) -> dict[str, str]:
    """The command's environment: the replay protocol, the new run, the proxy and its CA."""
    env = {k: v for k, v in base.items() if k not in ("NO_PROXY", "no_proxy")}
    env.update({
        "TRACELAB_REPLAY": str(recording),
        "TRACELAB_REPLAY_ON_MISS": on_miss,
        "TRACELAB_REPLAY_SPEED": repr(float(speed)),
        "TRACELAB_REPLAY_IGNORE": orjson.dumps(list(ignore)).decode(),
        "TRACELAB_REPLAY_HEADERS": orjson.dumps(list(headers)).decode(),
        "TRACELAB_REPLAY_REPORT": str(report),
        "TRACELAB_WORKFLOW_NAME": workflow,
        "TRACELAB_RUN_ID": run_id,
        "TRACELAB_TAGS": orjson.dumps({**_user_tags(), "replay_of": replay_of}).decode(),
    })
    if faults is not None:
        env["TRACELAB_REPLAY_FAULTS"] = f"@{faults}"
    else:
        env.pop("TRACELAB_REPLAY_FAULTS", None)  # an outer replay's rules are not this one's
    env.update(dict.fromkeys(_PROXY_VARS, proxy_url))
    env.update(dict.fromkeys(_CA_VARS, str(ca_cert)))
    # Node 24+ (and late 22.x) send fetch/http through HTTP(S)_PROXY only when asked: so a
    # Node program without the SDK is answered by the replay proxy instead of going live.
    env["NODE_USE_ENV_PROXY"] = "1"
    return env


def _proxy_env(env: Mapping[str, str]) -> dict[str, str]:
    """The proxy's own environment: the new run's identity, but no replay of its own, no
    proxy to go through and the usual trust store when it forwards a passthrough call."""
    drop = set(_PROXY_VARS) | set(_CA_VARS) | {"NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
                                               "NODE_USE_ENV_PROXY"}
    clean = {k: v for k, v in env.items()
             if k not in drop and not k.startswith("TRACELAB_REPLAY")}
    clean.update({k: os.environ[k] for k in _CA_VARS if k in os.environ})
    clean["TRACELAB_SERVICE_NAME"] = "replay-proxy"
    return clean


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + _PROXY_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the replay proxy exited with status {proc.returncode} "
                               "before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the replay proxy did not listen on 127.0.0.1:{port} within "
                       f"{_PROXY_START_TIMEOUT:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_PROXY_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_faults(faults: str | Path | None) -> Path | None:
    """The fault rules file as an absolute path, once every rule in it is valid.

    Raises ReplayInputError listing every reason (`FaultRuleError.errors`, each naming the
    file and the rule), so a bad file stops the replay before anything runs.
    """
    if faults is None:
        return None
    from tracelab.replay.faults import FaultRuleError, load_rules

    path = Path(faults).expanduser().resolve()
    try:
        load_rules(path)
    except FaultRuleError as exc:
        reasons = "\n".join(f"  {e}" for e in exc.errors)
        raise ReplayInputError(f"--faults {faults}: invalid fault rules "
                               f"({len(exc.errors)} errors):\n{reasons}") from None
    return path


def _run_command(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> int | None:
    try:
        child = subprocess.Popen(list(argv), env=dict(env), cwd=cwd)
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        print(f"tracelab replay: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return None
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        return child.wait()


def _check_options(on_miss: str, speed: float, ignore: Sequence[str],
                   headers: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from tracelab.replay.matching import parse_ignore

    if on_miss not in ON_MISS_MODES:
        raise ReplayInputError(f"--on-miss must be one of {', '.join(ON_MISS_MODES)}, "
                               f"got {on_miss!r}")
    if not speed >= 0:  # also refuses NaN
        raise ReplayInputError(f"--speed must be a number >= 0, got {speed!r}")
    try:
        rules = tuple(parse_ignore(rule) for rule in ignore)
    except ValueError as exc:
        raise ReplayInputError(str(exc)) from None
    names = tuple(h.strip().lower() for h in headers)
    if any(not n for n in names):
        raise ReplayInputError("--match-headers needs a header name")
    return rules, names


def _command(cmd: Sequence[str] | None, recorded: Mapping[str, Any] | None
             ) -> tuple[list[str], str | None]:
    """The command to run and its cwd: `cmd`, else the recorded one.

    The SDK records `sys.argv` (the script and its arguments) and the interpreter apart, so
    the interpreter is put back in front; the recorded one if it exists here, else this one.
    """
    if cmd:
        return list(cmd), None
    recorded = recorded or {}
    if recorded.get("truncated"):
        raise ReplayInputError("the recorded command was cut to fit the tag limit, so it is not "
                               "run again; give it after `--`, e.g. `tracelab replay RUN -- "
                               "python agent.py ...`")
    argv = recorded.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ReplayInputError("the recording holds no command to run (it was recorded without "
                               "the Python SDK, or by an older one); give one after `--`, e.g. "
                               "`tracelab replay RUN -- python agent.py`")
    if argv[0] in ("-c", ""):
        raise ReplayInputError("the recorded command was `python -c ...` (its code is not "
                               "recorded); give it after `--`")
    executable = recorded.get("executable")
    if isinstance(executable, str) and executable and \
            Path(argv[0]).name != Path(executable).name:
        argv = [executable if Path(executable).is_file() else sys.executable, *argv]
    from tracelab.sdk.redaction import MARKER

    if any(MARKER in a for a in argv):
        print(f"tracelab replay: warning: the recorded command had secrets redacted; they are "
              f"passed as {MARKER} (give the command after `--` to pass them)", file=sys.stderr)
    cwd = recorded.get("cwd")
    return argv, cwd if isinstance(cwd, str) and Path(cwd).is_dir() else None


def run_replay(source: str | Path, cmd: Sequence[str] | None = None, on_miss: str = "fail",
               speed: float = 0.0, ignore: Sequence[str] = (), headers: Sequence[str] = (),
               workflow: str | None = None, run_id: str | None = None,
               faults: str | Path | None = None) -> ReplayResult:
    """Run `cmd` (default: the recorded command) answered from `source`; see the module doc.

    `faults`: a fault rules file (YAML or JSON, `tracelab.replay.faults`) applied to the
    command's calls. Prints the miss explanations, the resilience report (with `faults`), the
    reason of a failure and, last, the summary line to stderr. Bad input (flags, source, fault
    rules, no command) gives exit status 2 without running anything.
    """
    try:
        return _replay(source, cmd, on_miss, speed, ignore, headers, workflow, run_id, faults)
    except ReplayInputError as exc:
        print(f"tracelab replay: {exc}", file=sys.stderr)
        return ReplayResult(EXIT_BAD_INPUT, "", None, [], reason=str(exc))


def _replay(source: str | Path, cmd: Sequence[str] | None, on_miss: str, speed: float,
            ignore: Sequence[str], headers: Sequence[str], workflow: str | None,
            run_id: str | None, faults: str | Path | None) -> ReplayResult:
    from tracelab.events import new_run_id
    from tracelab.proxy.runner import ensure_ca
    from tracelab.replay.recording import RecordingError, load_recording, write_recording

    rules, names = _check_options(on_miss, speed, ignore, headers)
    faults_file = check_faults(faults)
    try:
        recording = load_recording(source)
    except (RecordingError, KeyError, OSError) as exc:
        raise ReplayInputError(str(exc).strip('"')) from None
    if recording.run_id is None:
        raise ReplayInputError(f"{source}: the recording holds no single run to replay")
    argv, cwd = _command(cmd, recording.command)
    calls = [str(e.get("event_id")) for e in recording.events if replayable(e)]
    new_run = run_id or new_run_id()
    ca_cert, _created = ensure_ca()
    with tempfile.TemporaryDirectory(prefix="tracelab-replay-") as tmp:
        path = Path(source)
        recording_file = path.resolve() if path.is_file() else \
            write_recording(recording.events, Path(tmp) / "recording.jsonl")
        report = Path(tmp) / "report.jsonl"
        report.touch(mode=0o600)
        port = free_port()
        env = child_env(os.environ, recording=recording_file, report=report, on_miss=on_miss,
                        speed=speed, ignore=rules, headers=names,
                        workflow=workflow or recording.workflow or "replay", run_id=new_run,
                        replay_of=recording.run_id, proxy_url=f"http://127.0.0.1:{port}",
                        ca_cert=ca_cert, faults=faults_file)
        proxy_argv = [sys.executable, "-m", "tracelab.proxy.replay",
                      "--recording", str(recording_file), "--port", str(port),
                      "--on-miss", on_miss, "--speed", repr(float(speed)),
                      "--ignore", orjson.dumps(list(rules)).decode(),
                      "--headers", orjson.dumps(list(names)).decode(), "--report", str(report)]
        if faults_file is not None:
            proxy_argv += ["--faults", str(faults_file)]
        proxy = subprocess.Popen(proxy_argv, env=_proxy_env(env))
        duration_ms: float | None = None
        try:
            try:
                _wait_listening(proxy, port)
            except RuntimeError as exc:
                print(f"tracelab replay: {exc}", file=sys.stderr)
                return ReplayResult(1, "", new_run, [], reason=str(exc))
            started = time.monotonic()
            command_exit = _run_command(argv, env, cwd)
            duration_ms = (time.monotonic() - started) * 1000
        finally:
            _stop(proxy)
        tally = tally_reports(report.read_bytes().splitlines(), calls)
    code, reason = verdict(command_exit, tally, proxy_reported="proxy" in tally.reports)
    for miss in tally.misses:
        print(f"tracelab replay: miss: {miss.get('message') or miss.get('call')}",
              file=sys.stderr)
    resilience = None
    if faults_file is not None:
        from tracelab.replay.resilience import analyse, format_report

        resilience = analyse(tally.calls, exit_code=command_exit)
        print(format_report(resilience), file=sys.stderr)
    if code != 0:
        print(f"tracelab replay: failed: {reason}", file=sys.stderr)
    print(tally.summary, file=sys.stderr, flush=True)
    return ReplayResult(code, tally.summary, new_run, tally.misses, reason=reason,
                        command_exit=command_exit, tally=tally,
                        calls=tally.calls if tally.logged else None,
                        duration_ms=duration_ms, faulted=tally.faulted, resilience=resilience)
