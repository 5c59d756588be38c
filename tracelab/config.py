"""All of TraceLab's configuration, read in one place.

Arguments win over environment variables, which win over defaults. A malformed tuning value
(a queue size that is not a number, TRACELAB_TAGS that is not JSON) never crashes the traced
program: it is reported once as a warning and the default is used instead. The hard errors
(`ConfigError`, raised by `init()` before anything is installed) are the settings every event
would carry or be sent with: a missing workflow name, a name or tag beyond the event contract's
limits (every event would be dead-lettered, silently, far from the cause) and a Redis URL that
redis-py cannot parse.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracelab.events import (MAX_NAME_CHARS, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS, MAX_TAGS,
                             new_run_id)

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


DEFAULT_IDLE_S = 600.0


def idle_seconds() -> float:
    """`TRACELAB_IDLE_S`: seconds without a new event after which a run with no `end` event
    stops being `running` (default 600). Read at query time, so a notebook can change it.

    Unlike the SDK's tuning values this is read by the query layer, not the traced program:
    a bad value is a `ConfigError` naming the variable rather than a silent default, since
    every execution's `state` would otherwise be quietly wrong.
    """
    return _positive_seconds("TRACELAB_IDLE_S", DEFAULT_IDLE_S,
                             "how long a run may be silent before it is no longer running")


def _positive_seconds(name: str, default: float, meaning: str) -> float:
    """A positive, finite number of seconds from the environment, `default` when unset or
    blank; anything else a `ConfigError` naming the variable and saying what it means."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={_preview(raw)} must be a positive number of seconds "
                          f"({meaning}; default {default:g})")
    return value


def tracelab_home() -> Path:
    """`$TRACELAB_HOME`, default `~/.tracelab`: the spool, the store and the proxy's CA live here."""
    return Path(env_str("TRACELAB_HOME") or Path.home() / ".tracelab").expanduser()


def redis_url_for_server(flag: str | None = None) -> str:
    """The URL a server-side command uses: flag, TRACELAB_REDIS_URL, REDIS_URL, then localhost."""
    return (flag or env_str("TRACELAB_REDIS_URL") or env_str("REDIS_URL")
            or "redis://localhost:6379/0")


def redis_url_if_known(flag: str | None = None) -> str | None:
    """The Redis a maintenance command (`compact`, `retain`) coordinates through: flag,
    TRACELAB_REDIS_URL, REDIS_URL, else None (no localhost guess: without a Redis the command
    takes host-wide file locks only)."""
    return flag or env_str("TRACELAB_REDIS_URL") or env_str("REDIS_URL")


def host_id() -> str:
    """`TRACELAB_HOST_ID`, default this machine's host name: who holds a store lease, and the
    `<host>` of the ingester's default consumer name `ingest-<host>-<slot>`.

    Set it where host names are not unique or not stable (containers with generated names
    restart under new ones, and a consumer name should survive a restart)."""
    return env_str("TRACELAB_HOST_ID") or socket.gethostname()


DEFAULT_LEASE_TTL = 30.0


def lease_ttl() -> float:
    """`TRACELAB_LEASE_TTL`: seconds a store lease lives without renewal (default 30).

    A holder renews every third of it, so it is how long a crashed or cut-off host can keep
    a partition from the others. A bad value is a `ConfigError`: it would otherwise either
    stall every writer or let leases lapse under live ones.
    """
    return _positive_seconds("TRACELAB_LEASE_TTL", DEFAULT_LEASE_TTL,
                             "how long a store lease lives without renewal")


def _preview(value: str, limit: int = 60) -> str:
    """`value` for an error message: a huge value is cut to its start, marked by `…`."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}…"


def _tag_text(value: Any) -> str:
    """A tag value as text: strings as they are, anything else as JSON (`2`, `true`, `null`)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):  # circular or unprintable: never raise
        return repr(value)


def normalize_tags(tags: Mapping[str, Any] | None, *, origin: str,
                   strict: bool = True) -> dict[str, str]:
    """Tags as the contract wants them: string -> string, within `tracelab.events`' limits.

    The one tag normaliser of the SDK. `strict` (init's tags, TRACELAB_TAGS): a tag the contract
    would refuse is a `ConfigError` naming `origin` and the tag, because every event would carry
    it and be dead-lettered. Not strict (span and hook tags, met while the traced program runs,
    where TraceLab must never raise): cut to fit, and past `MAX_TAGS` entries dropped.
    """
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        if strict:
            raise ConfigError(f"{origin} must be a mapping of tags such as "
                              f'{{"team": "payments"}}, got {type(tags).__name__}')
        return {}
    if strict and len(tags) > MAX_TAGS:
        raise ConfigError(f"{origin} has {len(tags)} tags; an event carries at most {MAX_TAGS}")
    out: dict[str, str] = {}
    for key, value in tags.items():
        key, text = str(key), _tag_text(value)
        if not strict:
            if len(out) >= MAX_TAGS and key not in out:
                continue
            out[key[:MAX_TAG_KEY_CHARS] or "_"] = text[:MAX_TAG_VALUE_CHARS]
            continue
        if not key:
            raise ConfigError(f"{origin}: a tag key must not be empty")
        if len(key) > MAX_TAG_KEY_CHARS:
            raise ConfigError(f"{origin}: tag key {_preview(key)} is too long: {len(key)} "
                              f"chars, max {MAX_TAG_KEY_CHARS}")
        if len(text) > MAX_TAG_VALUE_CHARS:
            raise ConfigError(f"{origin}: tag {_preview(key)} has a value too long: "
                              f"{_preview(text)} is {len(text)} chars, max {MAX_TAG_VALUE_CHARS}")
        out[key] = text
    return out


def parse_tags_env() -> dict[str, str]:
    """TRACELAB_TAGS: not JSON, or not an object, is a warning; a tag past the limits an error."""
    raw = env_str("TRACELAB_TAGS")
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        _warn(f"TRACELAB_TAGS is not valid JSON ({exc}); expected an object such as "
              '{"team": "payments"}; ignoring it')
        return {}
    if not isinstance(parsed, dict):
        _warn(f"TRACELAB_TAGS must be a JSON object of tags, got {type(parsed).__name__}; "
              "ignoring it")
        return {}
    return normalize_tags(parsed, origin="TRACELAB_TAGS")


def _merge_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    merged = parse_tags_env()
    merged.update(normalize_tags(tags, origin="init(tags=...)"))
    if len(merged) > MAX_TAGS:
        raise ConfigError(f"TRACELAB_TAGS and init(tags=...) together make {len(merged)} tags; "
                          f"an event carries at most {MAX_TAGS}")
    return merged


def _name(value: Any, argument: str, variable: str, default: str | None = None) -> str | None:
    """A workflow/service/run id from its argument, else its variable, checked against the
    contract's length limit; the error names where the value came from."""
    origin = f"init({argument}=...)"
    if value is None or value == "":
        value, origin = env_str(variable), variable
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(f"{origin} must be a string, got {type(value).__name__}")
    if len(value) > MAX_NAME_CHARS:
        raise ConfigError(f"{origin}={_preview(value)} is too long: {len(value)} chars, and "
                          f"an event's {argument.removesuffix('_name')} has at most "
                          f"{MAX_NAME_CHARS}")
    return value


def check_redis_url(url: str, origin: str) -> None:
    """Raise `ConfigError` unless redis-py can build a connection from `url` (nothing is
    connected). The message names `origin` and shows the URL without its password."""
    if not isinstance(url, str):
        raise ConfigError(f"{origin} must be a string such as redis://localhost:6379/0, "
                          f"got {type(url).__name__}")
    import redis

    try:
        pool = redis.ConnectionPool.from_url(url)
        pool.connection_class(**pool.connection_kwargs)
    except Exception as exc:
        raise ConfigError(
            f"{origin}={_preview(url_without_password(url))} is not a Redis URL redis-py "
            f"can use ({type(exc).__name__}: {exc}); "
            "expected redis://[[user]:password@]host[:port][/db], rediss://… or "
            "unix:///path/to/socket") from None


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
    """Combine `init()` arguments with the environment into one SDKConfig.

    Raises `ConfigError` (naming the argument or variable) for what would make every event
    invalid or undeliverable, before the caller has installed anything.
    """
    workflow = _name(workflow_name, "workflow_name", "TRACELAB_WORKFLOW_NAME")
    if not workflow:
        raise ConfigError(
            "TraceLab needs a workflow name: pass init(workflow_name=...) or set the "
            "TRACELAB_WORKFLOW_NAME environment variable")
    service = _name(service_name, "service_name", "TRACELAB_SERVICE_NAME",
                    socket.gethostname()[:MAX_NAME_CHARS] or "unknown")
    run = _name(run_id, "run_id", "TRACELAB_RUN_ID") or new_run_id()
    merged_tags = _merge_tags(tags)
    if redis_url:
        check_redis_url(redis_url, "init(redis_url=...)")
    else:
        redis_url = env_str("TRACELAB_REDIS_URL")
        if redis_url:
            check_redis_url(redis_url, "TRACELAB_REDIS_URL")
    if isinstance(integrations, str):
        integrations = [integrations]
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
        service=service,
        run_id=run,
        tags=merged_tags,
        redis_url=redis_url,
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
