"""Every integration's patches: init installs them once, a second install or init is a no-op,
shutdown puts back exactly what was there, and a second uninstall changes nothing."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tracelab

from conftest import RedisServer


@dataclass(frozen=True)
class Integration:
    name: str  # tracelab.sdk.integrations.<name>
    patched: tuple[tuple[str, str, str], ...]  # (module, class, attribute) that init replaces
    # (module, class, attribute) that inherits a patched attribute and must not get its own copy
    inherited: tuple[tuple[str, str, str], ...] = ()


TWILIO_MESSAGES = "twilio.rest.api.v2010.account.message"
INTEGRATIONS = [
    Integration("requests", (("requests", "Session", "send"),)),
    Integration("httpx", (("httpx", "Client", "send"), ("httpx", "AsyncClient", "send"))),
    Integration("smtplib", (("smtplib", "SMTP", "sendmail"),),
                inherited=(("smtplib", "SMTP_SSL", "sendmail"),)),
    Integration("boto3", (("botocore.client", "BaseClient", "_make_api_call"),)),
    Integration("twilio", tuple((TWILIO_MESSAGES, "MessageList", name)
                                for name in ("create", "create_async", "create_with_http_info"))),
]


def owners(places: tuple[tuple[str, str, str], ...]) -> list[tuple[type, str]]:
    return [(getattr(importlib.import_module(module), cls), attr) for module, cls, attr in places]


def own_attributes(places: list[tuple[type, str]]) -> list[Any]:
    """What each class holds in its own `__dict__` (not what it inherits)."""
    return [cls.__dict__[attr] for cls, attr in places]


def assert_identical(actual: list[Any], expected: list[Any]) -> None:
    # Identity, not ==: a wrapt wrapper compares equal to the function it wraps.
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got is want, (got, want)


@pytest.mark.parametrize("integration", INTEGRATIONS, ids=lambda i: i.name)
def test_install_twice_is_a_noop_and_uninstall_restores_exactly(
        integration: Integration, redis_server: RedisServer, tracelab_home: Path) -> None:
    module = importlib.import_module(f"tracelab.sdk.integrations.{integration.name}")
    places = owners(integration.patched)
    originals = own_attributes(places)
    tracelab.init(workflow_name="lifecycle", redis_url=redis_server.url)
    try:
        patched = own_attributes(places)
        for (cls, attr), original, wrapper in zip(places, originals, patched):
            assert wrapper is not original, f"{cls.__qualname__}.{attr} was not patched"
            assert wrapper.__wrapped__ is original
            assert getattr(cls, attr).__wrapped__ is original
        module.install()
        assert_identical(own_attributes(places), patched)
        tracelab.init(workflow_name="lifecycle-again", redis_url=redis_server.url)
        assert_identical(own_attributes(places), patched)
        for cls, attr in owners(integration.inherited):
            assert attr not in cls.__dict__, f"{cls.__qualname__}.{attr} was patched twice"
    finally:
        tracelab.shutdown()
    assert_identical(own_attributes(places), originals)
    for cls, attr in places:
        assert not hasattr(getattr(cls, attr), "_self_tracelab_patched")
    module.uninstall()  # a second uninstall is a no-op
    assert_identical(own_attributes(places), originals)
