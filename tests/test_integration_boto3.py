"""boto3 integration: real SES and SES v2 clients against a loopback stand-in of the SES APIs.

The stand-in speaks just enough of the SES v1 query API (form-encoded POST, XML replies), the
SES v2 REST-JSON API and STS's GetCallerIdentity (a non-SES service that must not be
recorded); boto3 reaches it through its own `endpoint_url` setting, signing with dummy keys.
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

import tracelab
from tracelab.sdk.integrations import boto3 as boto3_integration

from conftest import (RedisServer, capture_broken, free_port, raised_in_library, read_events,
                      run_late_import)

ACCESS_KEY = "AKIDTRACELABTEST01"
SECRET_KEY = "aws-secret-key-9d8c7b6a5f4e3d2c1b0a"
UNVERIFIED = "unverified@example.test"
SES_NS = "http://ses.amazonaws.com/doc/2010-12-01/"


class _SESStandIn(ThreadingHTTPServer):
    """Holds what the stand-in saw and how it should misbehave next."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SESHandler)
        self.seen: list[tuple[str, str, str]] = []  # (path or Action, Authorization, body)
        self.fail_next = 0  # answer this many requests with a 500 before recovering
        self.lock = threading.Lock()

    def take_failure(self) -> bool:
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False


class _SESHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _SESStandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: str, content_type: str,
               extra: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "req-standin-1")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        auth = self.headers.get("Authorization", "")
        if self.path.startswith("/v2/email/"):
            self.server.seen.append((self.path, auth, body))
            self._v2(json.loads(body or "{}"))
        else:
            form = {k: v[0] for k, v in parse_qs(body).items()}
            self.server.seen.append((form.get("Action", "?"), auth, body))
            self._query(form)

    def _query(self, form: dict[str, str]) -> None:
        action = form.get("Action")
        if action == "GetCallerIdentity":
            self._reply(200, (
                '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                "<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/test</Arn>"
                "<UserId>AIDATEST</UserId><Account>123456789012</Account>"
                "</GetCallerIdentityResult><ResponseMetadata><RequestId>r-sts</RequestId>"
                "</ResponseMetadata></GetCallerIdentityResponse>"), "text/xml")
        elif self.server.take_failure():
            self._reply(500, self._error("Receiver", "InternalFailure", "try again"), "text/xml")
        elif form.get("Source") == UNVERIFIED:
            self._reply(400, self._error("Sender", "MessageRejected",
                                         "Email address is not verified."), "text/xml")
        elif action in ("SendEmail", "SendRawEmail"):
            self._reply(200, (
                f'<{action}Response xmlns="{SES_NS}"><{action}Result>'
                f"<MessageId>0100-v1-{len(self.server.seen)}</MessageId></{action}Result>"
                f"<ResponseMetadata><RequestId>r-ses</RequestId></ResponseMetadata>"
                f"</{action}Response>"), "text/xml")
        else:
            self._reply(400, self._error("Sender", "InvalidAction", str(action)), "text/xml")

    @staticmethod
    def _error(kind: str, code: str, message: str) -> str:
        return (f'<ErrorResponse xmlns="{SES_NS}"><Error><Type>{kind}</Type><Code>{code}</Code>'
                f"<Message>{message}</Message></Error><RequestId>r-err</RequestId></ErrorResponse>")

    def _v2(self, payload: dict[str, Any]) -> None:
        if self.server.take_failure():
            self._reply(500, '{"message": "internal failure"}', "application/json",
                        {"x-amzn-ErrorType": "InternalServiceErrorException"})
        elif payload.get("FromEmailAddress") == UNVERIFIED:
            self._reply(400, '{"message": "Email address is not verified."}',
                        "application/json", {"x-amzn-ErrorType": "MessageRejected"})
        elif self.path == "/v2/email/outbound-emails":
            self._reply(200, json.dumps({"MessageId": f"0100-v2-{len(self.server.seen)}"}),
                        "application/json")
        elif self.path == "/v2/email/outbound-bulk-emails":
            results = [{"Status": "SUCCESS", "MessageId": f"0100-bulk-{i}"}
                       for i, _ in enumerate(payload.get("BulkEmailEntries", []))]
            self._reply(200, json.dumps({"BulkEmailEntryResults": results}), "application/json")
        else:
            self._reply(404, '{"message": "no such route"}', "application/json",
                        {"x-amzn-ErrorType": "NotFoundException"})


@pytest.fixture(scope="module")
def ses_server() -> Iterator[_SESStandIn]:
    server = _SESStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, ses_server: _SESStandIn) -> None:
    """No profile, config file or instance metadata of this machine leaks into the tests."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    ses_server.seen.clear()
    ses_server.fail_next = 0


def client(service: str, url: str, max_attempts: int = 2) -> Any:
    return boto3.client(
        service, region_name="eu-west-1", endpoint_url=url, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"total_max_attempts": max_attempts, "mode": "standard"},
                      connect_timeout=2, read_timeout=5))


def url_of(server: _SESStandIn) -> str:
    return f"http://127.0.0.1:{server.server_port}"


def assert_no_credentials(raw: bytes, server: _SESStandIn) -> None:
    assert SECRET_KEY.encode() not in raw
    signatures = [m.group(1) for _, auth, _ in server.seen
                  for m in [re.search(r"Signature=([0-9a-f]+)", auth)] if m]
    assert signatures, "the stand-in should have seen signed requests"
    for signature in signatures:
        assert signature.encode() not in raw


def test_sesv2_send_email_is_one_event_nested(traced: RedisServer,
                                              ses_server: _SESStandIn) -> None:
    ses = client("sesv2", url_of(ses_server))

    @tracelab.trace
    def notify() -> str:
        reply = ses.send_email(
            FromEmailAddress="shop@example.test",
            Destination={"ToAddresses": ["ada@example.test"]},
            Content={"Simple": {"Subject": {"Data": "Order shipped"},
                                "Body": {"Text": {"Data": "It is on its way."}}}})
        return reply["MessageId"]

    message_id = notify()
    assert message_id.startswith("0100-v2-")

    events, raw = read_events(traced)
    [span] = [e for e in events if e["kind"] == "function"]
    [event] = [e for e in events if e["kind"] != "function"]  # no http event beneath
    assert (event["kind"], event["target"], event["endpoint"]) == ("email", "aws:ses", "SendEmail")
    assert (event["status"], event["status_code"], event["error"]) == ("ok", 200, None)
    assert event["parent_id"] == span["span_id"]
    request = event["request"]
    assert (request["from"], request["to"], request["subject"]) == \
        ("shop@example.test", ["ada@example.test"], "Order shipped")
    assert request["region"] == "eu-west-1"
    assert request["params"]["Content"]["Simple"]["Body"]["Text"]["Data"] == "It is on its way."
    assert event["response"]["MessageId"] == message_id
    assert event["response"]["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert_no_credentials(raw, ses_server)


def test_ses_v1_retry_after_500_is_still_one_event(traced: RedisServer,
                                                   ses_server: _SESStandIn) -> None:
    ses_server.fail_next = 1
    ses = client("ses", url_of(ses_server))
    reply = ses.send_email(Source="shop@example.test",
                           Destination={"ToAddresses": ["ada@example.test"]},
                           Message={"Subject": {"Data": "Hello"},
                                    "Body": {"Text": {"Data": "v1 body"}}})
    assert reply["ResponseMetadata"]["RetryAttempts"] == 1
    assert [action for action, _, _ in ses_server.seen] == ["SendEmail", "SendEmail"]

    events, raw = read_events(traced)
    [event] = events
    assert (event["target"], event["endpoint"], event["status"], event["status_code"]) == \
        ("aws:ses", "SendEmail", "ok", 200)
    assert event["request"]["subject"] == "Hello"
    assert event["response"]["MessageId"] == reply["MessageId"]
    assert event["response"]["ResponseMetadata"]["RetryAttempts"] == 1
    assert_no_credentials(raw, ses_server)


def test_sesv2_500_on_every_attempt_is_one_error_event(traced: RedisServer,
                                                       ses_server: _SESStandIn) -> None:
    ses_server.fail_next = 10
    ses = client("sesv2", url_of(ses_server))
    with pytest.raises(ClientError) as caught:
        ses.send_email(FromEmailAddress="shop@example.test",
                       Destination={"ToAddresses": ["ada@example.test"]},
                       Content={"Simple": {"Subject": {"Data": "s"},
                                           "Body": {"Text": {"Data": "b"}}}})
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert raised_in_library(caught.value)
    assert len(ses_server.seen) == 2  # botocore tried twice

    events, _ = read_events(traced)
    [event] = events
    assert (event["endpoint"], event["status"], event["status_code"]) == ("SendEmail", "error", 500)
    assert "InternalServiceErrorException" in event["error"]["message"]
    assert event["response"]["Error"]["Code"] == "InternalServiceErrorException"


def test_ses_v1_rejected_message_is_a_client_error(traced: RedisServer,
                                                   ses_server: _SESStandIn) -> None:
    ses = client("ses", url_of(ses_server))
    with pytest.raises(ClientError) as caught:
        ses.send_email(Source=UNVERIFIED, Destination={"ToAddresses": ["ada@example.test"]},
                       Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}})
    assert caught.value.response["Error"]["Code"] == "MessageRejected"
    assert raised_in_library(caught.value)

    events, _ = read_events(traced)
    [event] = events
    assert (event["status"], event["status_code"]) == ("error", 400)
    assert event["error"]["type"] == type(caught.value).__qualname__
    assert "not verified" in event["error"]["message"]
    assert event["response"]["Error"] == {"Type": "Sender", "Code": "MessageRejected",
                                          "Message": "Email address is not verified."}


def test_raw_and_bulk_operations_keep_their_names(traced: RedisServer,
                                                  ses_server: _SESStandIn) -> None:
    raw_mime = b"From: shop@example.test\r\nSubject: Raw hello\r\n\r\nraw body\r\n"
    client("ses", url_of(ses_server)).send_raw_email(
        Source="shop@example.test", Destinations=["ada@example.test"],
        RawMessage={"Data": raw_mime})
    binary_mime = b"Subject: bin\r\n\r\n\xff\xfe\x00\x01"
    v2 = client("sesv2", url_of(ses_server))
    v2.send_email(FromEmailAddress="shop@example.test",
                  Destination={"ToAddresses": ["bob@example.test"]},
                  Content={"Raw": {"Data": binary_mime}})
    v2.send_bulk_email(
        FromEmailAddress="shop@example.test",
        DefaultContent={"Template": {"TemplateName": "welcome", "TemplateData": "{}"}},
        BulkEmailEntries=[{"Destination": {"ToAddresses": ["a@example.test"]}},
                          {"Destination": {"ToAddresses": ["b@example.test"]}}])

    events, _ = read_events(traced)
    assert [e["endpoint"] for e in events] == ["SendRawEmail", "SendEmail", "SendBulkEmail"]
    raw_event, binary_event, bulk_event = events
    assert raw_event["request"]["params"]["RawMessage"]["Data"] == raw_mime.decode()
    assert raw_event["request"]["to"] == ["ada@example.test"]
    marker = binary_event["request"]["params"]["Content"]["Raw"]["Data"]
    assert (marker["$tracelab"], marker["size"]) == ("binary", len(binary_mime))
    assert [r["Status"] for r in bulk_event["response"]["BulkEmailEntryResults"]] == \
        ["SUCCESS", "SUCCESS"]
    assert all(e["status"] == "ok" and e["status_code"] == 200 for e in events)


def test_other_aws_services_pass_through_unrecorded(traced: RedisServer,
                                                    ses_server: _SESStandIn) -> None:
    identity = client("sts", url_of(ses_server)).get_caller_identity()
    assert identity["Account"] == "123456789012"
    assert [action for action, _, _ in ses_server.seen] == ["GetCallerIdentity"]
    events, _ = read_events(traced)
    assert events == []


def test_refused_connection_is_an_error_event(traced: RedisServer) -> None:
    ses = client("sesv2", f"http://127.0.0.1:{free_port()}", max_attempts=1)
    with pytest.raises(EndpointConnectionError) as caught:
        ses.send_email(FromEmailAddress="shop@example.test",
                       Destination={"ToAddresses": ["ada@example.test"]},
                       Content={"Simple": {"Subject": {"Data": "s"},
                                           "Body": {"Text": {"Data": "b"}}}})
    assert raised_in_library(caught.value)
    events, _ = read_events(traced)
    [event] = events
    assert (event["status"], event["status_code"], event["response"]) == ("error", None, None)
    assert event["error"]["type"] == "EndpointConnectionError"


def test_boto3_imported_after_init_is_traced(redis_server: RedisServer, tracelab_home: Any,
                                             ses_server: _SESStandIn) -> None:
    events, _ = run_late_import(redis_server, ("botocore",), f"""
        import boto3
        ses = boto3.client("ses", region_name="us-east-1", endpoint_url={url_of(ses_server)!r},
                           aws_access_key_id="AKIDLATE", aws_secret_access_key="late-secret")
        ses.send_email(Source="a@example.test",
                       Destination={{"ToAddresses": ["b@example.test"]}},
                       Message={{"Subject": {{"Data": "late"}},
                                 "Body": {{"Text": {{"Data": "x"}}}}}})
        """)
    [event] = events
    assert (event["workflow"], event["target"], event["endpoint"], event["request"]["subject"]) \
        == ("late-import", "aws:ses", "SendEmail", "late")


def test_failing_capture_is_counted_never_felt(traced: RedisServer, ses_server: _SESStandIn,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with capture_broken(monkeypatch, boto3_integration, "build_event"):
        reply = client("ses", url_of(ses_server)).send_email(
            Source="a@example.test", Destination={"ToAddresses": ["b@example.test"]},
            Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}})
    assert reply["MessageId"]
