"""All of TraceLab's configuration, read in one place.

Arguments win over environment variables, which win over defaults. A malformed environment
value never crashes the traced program: it is reported once as a warning and the default is
used instead. The one hard error is a missing workflow name, because every event needs one.
"""
from __future__ import annotations

import json
import os
import re
import socket
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STREAM = "trace.events"
DEFAULT_MAX_BODY_BYTES = 65536


class ConfigError(ValueError):
    """A setting TraceLab cannot work with; the message says which one and how to fix it."""


class ConfigWarning(UserWarning):
    """A malformed setting that TraceLab replaced by its default."""


def _warn(message: str) -> None:
    warnings.warn(message, ConfigWarning, stacklevel=3)


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        _warn(f"{name}={raw!r} is not an integer; using {default}")
        return default
    if value < minimum:
        _warn(f"{name}={raw!r} is below {minimum}; using {default}")
        return default
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        _warn(f"{name}={raw!r} is not a number; using {default}")
        return default
    if not value >= minimum:  # also rejects NaN
        _warn(f"{name}={raw!r} is below {minimum}; using {default}")
        return default
    return value


def env_flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    _warn(f"{name}={raw!r} is not a boolean (use 1/0, true/false); using {default}")
    return default


def tracelab_home() -> Path:
    """`$TRACELAB_HOME`, default `~/.tracelab`: the spool, the store and the proxy's CA live here."""
    return Path(env_str("TRACELAB_HOME") or Path.home() / ".tracelab").expanduser()


def redis_url_for_server(flag: str | None = None) -> str:
    """The URL a server-side command uses: flag, TRACELAB_REDIS_URL, REDIS_URL, then localhost."""
    return (flag or env_str("TRACELAB_REDIS_URL") or env_str("REDIS_URL")
            or "redis://localhost:6379/0")


def normalize_tags(tags: Mapping[str, Any] | None, *, origin: str) -> dict[str, str]:
    """Tags are string -> string in the contract; other values are turned into text."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        _warn(f"{origin} must be a JSON object of tags, got {type(tags).__name__}; ignoring it")
        return {}
    out: dict[str, str] = {}
    for key, value in tags.items():
        out[str(key)] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def parse_tags_env() -> dict[str, str]:
    raw = env_str("TRACELAB_TAGS")
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        _warn(f"TRACELAB_TAGS is not valid JSON ({exc}); expected an object such as "
              '{"team": "payments"}; ignoring it')
        return {}
    return normalize_tags(parsed, origin="TRACELAB_TAGS")


def compile_patterns(patterns: Iterable[str], *, origin: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            _warn(f"{origin}: {pattern!r} is not a valid regular expression ({exc}); skipping it")
    return tuple(compiled)


@dataclass(frozen=True)
class SDKConfig:
    """What `tracelab.init()` resolved; immutable so the hot path can read it without locks."""

    workflow: str
    service: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None
    capture_payloads: bool = True
    redact_patterns: tuple[re.Pattern[str], ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    integrations: tuple[str, ...] | None = None
    home: Path = field(default_factory=tracelab_home)
    stream: str = DEFAULT_STREAM
    stream_maxlen: int | None = None
    queue_size: int = 10000
    batch_size: int = 256
    flush_interval: float = 0.1
    retry_seconds: float = 10.0
    shutdown_timeout: float = 2.0

    @property
    def mode(self) -> str:
        return "redis" if self.redis_url else "embedded"


def is_disabled() -> bool:
    return env_flag("TRACELAB_DISABLED", False)


def resolve_sdk_config(
    workflow_name: str | None = None,
    service_name: str | None = None,
    *,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    redis_url: str | None = None,
    capture_payloads: bool | None = None,
    redact: Iterable[str] = (),
    max_body_bytes: int | None = None,
    integrations: Iterable[str] | None = None,
) -> SDKConfig:
    """Combine `init()` arguments with the environment into one SDKConfig."""
    from tracelab.events import new_run_id

    workflow = workflow_name or env_str("TRACELAB_WORKFLOW_NAME")
    if not workflow:
        raise ConfigError(
            "TraceLab needs a workflow name: pass init(workflow_name=...) or set the "
            "TRACELAB_WORKFLOW_NAME environment variable")
    if not isinstance(workflow, str):
        raise ConfigError(f"workflow_name must be a string, got {type(workflow).__name__}")
    merged_tags = parse_tags_env()
    merged_tags.update(normalize_tags(tags, origin="init(tags=...)"))
    if isinstance(redact, str):
        redact = [redact]
    env_redact = (env_str("TRACELAB_REDACT") or "").split(",")
    if max_body_bytes is None:
        max_body_bytes = env_int("TRACELAB_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
    elif not isinstance(max_body_bytes, int) or max_body_bytes < 0:
        raise ConfigError(f"max_body_bytes must be a non-negative integer, got {max_body_bytes!r}")
    maxlen = env_int("TRACELAB_STREAM_MAXLEN", 0)
    return SDKConfig(
        workflow=workflow,
        service=service_name or env_str("TRACELAB_SERVICE_NAME") or socket.gethostname(),
        run_id=run_id or env_str("TRACELAB_RUN_ID") or new_run_id(),
        tags=merged_tags,
        redis_url=redis_url or env_str("TRACELAB_REDIS_URL"),
        capture_payloads=(env_flag("TRACELAB_CAPTURE_PAYLOADS", True)
                          if capture_payloads is None else bool(capture_payloads)),
        redact_patterns=compile_patterns([*redact, *env_redact], origin="redact"),
        max_body_bytes=max_body_bytes,
        integrations=None if integrations is None else tuple(integrations),
        home=tracelab_home(),
        stream=env_str("TRACELAB_STREAM") or DEFAULT_STREAM,
        stream_maxlen=maxlen or None,
        queue_size=env_int("TRACELAB_QUEUE_SIZE", 10000, minimum=1),
        batch_size=env_int("TRACELAB_BATCH_SIZE", 256, minimum=1),
        flush_interval=env_float("TRACELAB_FLUSH_INTERVAL", 0.1, minimum=0.001),
        retry_seconds=env_float("TRACELAB_RETRY_SECONDS", 10.0),
        shutdown_timeout=env_float("TRACELAB_SHUTDOWN_TIMEOUT", 2.0),
    )


def url_without_password(url: str) -> str:
    """`url` fit to print: the password (or a lone userinfo, often a token) and secret query
    values replaced by `***`, everything else as given.

    Every message that names a Redis or proxy URL goes through this one function, so a URL
    such as `redis://:secret@host:6379/0` never reaches a terminal or a log in clear.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    query = re.sub(r"(?i)(^|[&;])((?:password|passwd|pass|pwd|secret|token|auth|access_token|"
                   r"api_?key)=)[^&;#]*", r"\1\2***", parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    # Rebuilt by hand: urlunsplit would turn `unix:///path` into `unix:/path`.
    scheme = f"{parts.scheme}:" if parts.scheme else ""
    authority = f"//{netloc}" if url[len(scheme):].startswith("//") else netloc
    has_query = "?" in url.partition("#")[0]
    return (scheme + authority + parts.path + (f"?{query}" if has_query else "")
            + (f"#{parts.fragment}" if "#" in url else ""))
