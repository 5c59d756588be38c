"""Real vendor SDK clients pointed at the mocks (each vendor SDK is imported only when used).

Every function takes the mock's base URL (`http://127.0.0.1:9100` for stripe from
`tracelab mocks`). Only twilio needs more than a constructor argument: its SDK always builds
`https://api.twilio.com/...` URLs, so `twilio_client` gives it a `TwilioHttpClient` subclass that
rewrites that prefix to the mock before the request goes out. Everything else (auth, form
encoding, response parsing, the `twilio` integration's `kind: sms` events) is twilio's own.
"""
from __future__ import annotations

from typing import Any

TWILIO_BASE = "https://api.twilio.com"
TEST_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TEST_AUTH_TOKEN = "mock-auth-token"


def stripe_client(url: str, api_key: str = "sk_test_tracelab", **kwargs: Any) -> Any:
    import stripe

    kwargs.setdefault("max_network_retries", 0)
    return stripe.StripeClient(api_key, base_addresses={"api": url}, **kwargs)


def sendgrid_client(url: str, api_key: str = "SG.tracelab-mock") -> Any:
    import sendgrid

    return sendgrid.SendGridAPIClient(api_key=api_key, host=url)


def ses_client(url: str, service: str = "sesv2", **kwargs: Any) -> Any:
    import boto3
    from botocore.config import Config

    kwargs.setdefault("config", Config(retries={"max_attempts": 1, "mode": "standard"},
                                       connect_timeout=5, read_timeout=10))
    return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing", **kwargs)


def openai_client(url: str, api_key: str = "sk-tracelab-mock", **kwargs: Any) -> Any:
    import openai

    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 10.0)
    return openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key, **kwargs)


def twilio_http_client(url: str, **kwargs: Any) -> Any:
    """A `TwilioHttpClient` sending what twilio addresses to api.twilio.com to `url`."""
    from twilio.http.http_client import TwilioHttpClient

    base = url.rstrip("/")

    class MockTwilioHttpClient(TwilioHttpClient):
        def request(self, method: str, url: str, *args: Any, **kw: Any) -> Any:
            if url.startswith(TWILIO_BASE):
                url = base + url[len(TWILIO_BASE):]
            return super().request(method, url, *args, **kw)

    kwargs.setdefault("timeout", 10)
    return MockTwilioHttpClient(**kwargs)


def twilio_client(url: str, account_sid: str = TEST_ACCOUNT_SID,
                  auth_token: str = TEST_AUTH_TOKEN, **kwargs: Any) -> Any:
    from twilio.rest import Client

    return Client(account_sid, auth_token, http_client=twilio_http_client(url, **kwargs))
