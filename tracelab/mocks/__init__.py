"""Mock vendor services for isolated, deterministic, chaos-ready runs: no accounts, no Docker.

Each vendor is one module here holding a FastAPI app behind the shared fault layer
(rules: `tracelab.replay.faults`; applied by `tracelab.mocks.middleware`):
`create_app(faults=None)` (rules from `MOCK_FAULTS` when not given) and
`error_body(status, path)` (the vendor's error shape, used by `status` faults without a body).
The top-level `mocks/<vendor>/` folders are thin entry points plus a Dockerfile each, so
`pip install tracelab` users get the same apps through `tracelab mocks` or
`python -m tracelab.mocks VENDOR`.

Ports are fixed offsets from a base (default 9100), whichever mocks run, so a URL never moves:
stripe +0, sendgrid +1, twilio +2, ses +3, openai +4.

To add a mock: write `tracelab/mocks/<vendor>.py` with `NAME`, `error_body` and `create_app`
(end it with `wrap(app, NAME, error_body, faults)`), add it to `VENDORS` below with the next
offset, add `mocks/<vendor>/app.py` + `Dockerfile` (copy another vendor's) and a
`mock-<vendor>` service to `docker-compose.yml`; `tests/test_mocks.py` and
`tests/test_compose.py` then check it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

DEFAULT_BASE_PORT = 9100
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Vendor:
    name: str
    module: str
    offset: int
    endpoints: str
    how: str  # how to point the real SDK at URL ({url} is replaced)

    def port(self, base: int = DEFAULT_BASE_PORT) -> int:
        return base + self.offset


VENDORS: dict[str, Vendor] = {v.name: v for v in (
    Vendor("stripe", "tracelab.mocks.stripe", 0,
           "POST /v1/charges, /v1/payment_intents, /v1/refunds",
           'stripe.StripeClient("sk_test_x", base_addresses={{"api": "{url}"}})'),
    Vendor("sendgrid", "tracelab.mocks.sendgrid", 1, "POST /v3/mail/send",
           'sendgrid.SendGridAPIClient("SG.x", host="{url}")'),
    Vendor("twilio", "tracelab.mocks.twilio", 2,
           "POST /2010-04-01/Accounts/{sid}/Messages.json",
           'tracelab.mocks.clients.twilio_client("{url}")'),
    Vendor("ses", "tracelab.mocks.ses", 3, "POST /v2/email/outbound-emails, POST / SendEmail",
           'boto3.client("sesv2", endpoint_url="{url}", region_name="us-east-1")'),
    Vendor("openai", "tracelab.mocks.openai", 4, "POST /v1/chat/completions (stream too)",
           'openai.OpenAI(base_url="{url}/v1", api_key="sk-test")'),
)}


def vendor(name: str) -> Vendor:
    try:
        return VENDORS[name]
    except KeyError:
        raise ValueError(f"unknown mock {name!r}; choose from {', '.join(VENDORS)}") from None


def create_app(name: str, faults: Any = None) -> Any:
    """The ASGI app of one mock (fault layer included)."""
    return importlib.import_module(vendor(name).module).create_app(faults)


def main(argv: list[str] | None = None) -> int:
    """`python -m tracelab.mocks VENDOR [--host H] [--port P]`: one mock in the foreground
    (what each Docker image runs). Defaults: $MOCK_HOST or 127.0.0.1, $MOCK_PORT or the
    vendor's port from 9100."""
    import argparse
    import os
    import sys

    from tracelab.cli.mocks import port_number, run_mocks

    parser = argparse.ArgumentParser(prog="python -m tracelab.mocks",
                                     description="run one TraceLab mock vendor service")
    parser.add_argument("vendor", choices=list(VENDORS))
    parser.add_argument("--host", default=os.environ.get("MOCK_HOST") or DEFAULT_HOST)
    parser.add_argument("--port", type=port_number, default=None)
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    port = args.port
    if port is None:
        env = os.environ.get("MOCK_PORT")
        try:
            port = port_number(env) if env else vendor(args.vendor).port()
        except argparse.ArgumentTypeError as exc:
            print(f"MOCK_PORT: {exc}", file=sys.stderr)
            return 2
    return run_mocks({args.vendor: port}, host=args.host, log_level=args.log_level)
