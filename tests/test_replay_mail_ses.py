"""boto3 SES / SES v2 replay: record against the loopback SES stand-in, stop it, replay.

botocore is pointed at the stand-in with its own `endpoint_url`, exactly as in
tests/test_integration_boto3.py. During the replay the stand-in is shut down (its port
refuses connections), the app still gets the recorded MessageIds and the recorded
`MessageRejected`, and a changed recipient is botocore's own `EndpointConnectionError` naming
the difference.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

import tracelab

from conftest import RedisServer, read_events
from test_integration_boto3 import UNVERIFIED, _SESStandIn, client, url_of


@pytest.fixture
def ses_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[_SESStandIn]:
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = _SESStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.running = True  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        if server.running:  # type: ignore[attr-defined]
            _stop(server)


def _stop(server: _SESStandIn) -> None:
    server.shutdown()
    server.server_close()
    server.running = False  # type: ignore[attr-defined]


def _workload(url: str, to: str = "ada@example.test") -> dict[str, Any]:
    """What the app does: a v2 SendEmail, a v1 SendRawEmail, a v1 SendEmail SES rejects."""
    v2, v1 = client("sesv2", url), client("ses", url)
    out: dict[str, Any] = {}
    out["v2"] = v2.send_email(
        FromEmailAddress="shop@example.test", Destination={"ToAddresses": [to]},
        Content={"Simple": {"Subject": {"Data": "Order shipped"},
                            "Body": {"Text": {"Data": "It is on its way."}}}})["MessageId"]
    out["raw"] = v1.send_raw_email(
        Source="shop@example.test", Destinations=[to],
        RawMessage={"Data": b"Subject: Raw hello\r\n\r\nraw body\r\n"})["MessageId"]
    try:
        v1.send_email(Source=UNVERIFIED, Destination={"ToAddresses": [to]},
                      Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}})
    except ClientError as exc:
        out["rejected"] = (type(exc).__name__, exc.response["Error"]["Code"],
                           exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return out


def _record(traced: RedisServer, server: _SESStandIn, path: Path) -> tuple[dict[str, Any],
                                                                          list[dict[str, Any]]]:
    live = _workload(url_of(server))
    assert live["rejected"] == ("MessageRejected", "MessageRejected", 400)
    events, _ = read_events(traced)
    assert [e["endpoint"] for e in events] == ["SendEmail", "SendRawEmail", "SendEmail"]
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return live, events


def _new_events(traced: RedisServer, recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events, _ = read_events(traced)
    old = {e["event_id"] for e in recorded}
    return [e for e in events if e["event_id"] not in old]


def test_replay_gives_the_recorded_message_ids_with_no_server(
        traced: RedisServer, ses_server: _SESStandIn, tmp_path: Path) -> None:
    recording = tmp_path / "ses.jsonl"
    live, recorded = _record(traced, ses_server, recording)
    url = url_of(ses_server)
    seen = len(ses_server.seen)
    _stop(ses_server)  # its port now refuses connections

    with tracelab.replay(str(recording)) as session:
        replayed = _workload(url)
    assert replayed == live  # the MessageIds botocore parsed are the recorded ones
    assert list(session.misses) == [] and list(session.unused) == []
    assert len(ses_server.seen) == seen

    new = _new_events(traced, recorded)
    assert [(e["endpoint"], e["status"], e["status_code"]) for e in new] == \
        [("SendEmail", "ok", 200), ("SendRawEmail", "ok", 200), ("SendEmail", "error", 400)]
    assert [e["tags"].get("replay") for e in new] == ["hit", "hit", "hit"]
    assert new[0]["response"]["MessageId"] == live["v2"]
    assert new[2]["response"]["Error"]["Code"] == "MessageRejected"


def test_running_stand_in_receives_nothing(traced: RedisServer, ses_server: _SESStandIn,
                                           tmp_path: Path) -> None:
    recording = tmp_path / "ses.jsonl"
    _record(traced, ses_server, recording)
    ses_server.seen.clear()
    with tracelab.replay(str(recording)):
        _workload(url_of(ses_server))
    assert ses_server.seen == []


def test_changed_recipient_is_botocores_connection_error(
        traced: RedisServer, ses_server: _SESStandIn, tmp_path: Path) -> None:
    recording = tmp_path / "ses.jsonl"
    _, recorded = _record(traced, ses_server, recording)
    url = url_of(ses_server)
    _stop(ses_server)

    with tracelab.replay(str(recording)) as session:
        with pytest.raises(EndpointConnectionError) as caught:
            _workload(url, to="eve@example.test")
    message = str(caught.value)
    assert message.startswith("Could not connect to the endpoint URL")
    assert "eve@example.test" in message and "ada@example.test" in message
    assert "ToAddresses" in message
    assert len(session.misses) == 1

    [missed] = _new_events(traced, recorded)
    assert (missed["status"], missed["error"]["type"]) == ("error", "EndpointConnectionError")
    assert missed["tags"].get("replay") == "miss"


def test_other_aws_services_are_not_answered_from_the_recording(
        traced: RedisServer, ses_server: _SESStandIn, tmp_path: Path) -> None:
    recording = tmp_path / "ses.jsonl"
    _record(traced, ses_server, recording)
    ses_server.seen.clear()
    with tracelab.replay(str(recording), on_miss="passthrough"):
        identity = client("sts", url_of(ses_server)).get_caller_identity()
    assert identity["Account"] == "123456789012"
    assert [action for action, _, _ in ses_server.seen] == ["GetCallerIdentity"]


def test_passthrough_sends_only_the_unrecorded_call(traced: RedisServer,
                                                   ses_server: _SESStandIn,
                                                   tmp_path: Path) -> None:
    recording = tmp_path / "ses.jsonl"
    live, recorded = _record(traced, ses_server, recording)
    ses_server.seen.clear()
    with tracelab.replay(str(recording), on_miss="passthrough") as session:
        v2 = client("sesv2", url_of(ses_server))
        hit = v2.send_email(
            FromEmailAddress="shop@example.test", Destination={"ToAddresses": ["ada@example.test"]},
            Content={"Simple": {"Subject": {"Data": "Order shipped"},
                                "Body": {"Text": {"Data": "It is on its way."}}}})
        sent = v2.send_email(
            FromEmailAddress="shop@example.test", Destination={"ToAddresses": ["eve@example.test"]},
            Content={"Simple": {"Subject": {"Data": "New"}, "Body": {"Text": {"Data": "x"}}}})
    assert hit["MessageId"] == live["v2"]
    assert sent["MessageId"].startswith("0100-v2-")
    assert [path for path, _, _ in ses_server.seen] == ["/v2/email/outbound-emails"]
    assert len(session.passthrough) == 1
    assert [e["tags"].get("replay") for e in _new_events(traced, recorded)] == \
        ["hit", "passthrough"]


def test_a_recorded_unreachable_endpoint_is_unreachable_again(
        traced: RedisServer, ses_server: _SESStandIn, tmp_path: Path) -> None:
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    v2 = client("sesv2", url, max_attempts=1)
    params: dict[str, Any] = {
        "FromEmailAddress": "shop@example.test", "Destination": {"ToAddresses": ["a@x.test"]},
        "Content": {"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}}}
    with pytest.raises(EndpointConnectionError):
        v2.send_email(**params)
    events, _ = read_events(traced)
    recording = tmp_path / "unreachable.jsonl"
    recording.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    with tracelab.replay(str(recording)) as session:
        with pytest.raises(EndpointConnectionError) as caught:
            v2.send_email(**params)
    assert "recorded failure" in str(caught.value)
    assert len(session.hits) == 1
