"""The requests integration against a real loopback server, events read back from real Redis."""
from __future__ import annotations

import socket

import pytest
import requests
from conftest import LoopbackHTTP, RedisServer, free_port, read_events

import tracelab


def _events(server: RedisServer) -> list[dict]:
    return read_events(server)[0]


def test_get_and_post_are_recorded_with_contract_fields(traced: RedisServer,
                                                        loopback_http: LoopbackHTTP) -> None:
    assert requests.get(f"{loopback_http.url}/items?page=2").status_code == 200
    assert requests.post(f"{loopback_http.url}/v1/charges", json={"amount": 100}).ok
    get, post = _events(traced)
    assert (get["kind"], get["source"], get["status"], get["status_code"]) == ("http", "sdk-py", "ok", 200)
    assert get["target"] == f"127.0.0.1:{loopback_http.port}"
    assert get["endpoint"] == "GET /items"  # no query string in the endpoint...
    assert get["request"]["url"].endswith("/items?page=2")  # ...it stays in the URL
    assert post["endpoint"] == "POST /v1/charges"
    assert post["request"]["body"] == {"amount": 100}
    assert post["response"]["body"]["method"] == "POST"
    assert (post["workflow"], post["service"]) == ("test-wf", "test-svc")
    assert get["run_id"] == post["run_id"]
    assert post["started_at"] >= get["started_at"] and post["latency_ms"] > 0


def test_http_error_status_is_an_error_event(traced: RedisServer, loopback_http: LoopbackHTTP) -> None:
    response = requests.get(f"{loopback_http.url}/status/503")
    assert response.status_code == 503
    (event,) = _events(traced)
    assert (event["status"], event["status_code"], event["error"]) == ("error", 503, None)


def test_refused_connection_is_recorded_and_reraised(traced: RedisServer) -> None:
    port = free_port()
    with pytest.raises(requests.ConnectionError) as raised:
        requests.get(f"http://127.0.0.1:{port}/x", timeout=2)
    (event,) = _events(traced)
    assert event["status"] == "error" and event["status_code"] is None
    assert event["response"] is None
    assert event["error"]["type"] == type(raised.value).__qualname__


def test_timeout_is_an_error_event(traced: RedisServer) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the TCP handshake, never answers
    try:
        with pytest.raises(requests.Timeout):
            requests.get(f"http://127.0.0.1:{listener.getsockname()[1]}/slow", timeout=0.3)
    finally:
        listener.close()
    (event,) = _events(traced)
    assert event["status"] == "error" and "Timeout" in event["error"]["type"]


def test_stream_true_is_never_consumed_on_the_callers_behalf(traced: RedisServer,
                                                              loopback_http: LoopbackHTTP) -> None:
    response = requests.get(f"{loopback_http.url}/stream", stream=True)
    assert not response._content_consumed
    chunks = list(response.iter_content(chunk_size=11))
    assert b"".join(chunks).startswith(b"data: one")
    (event,) = _events(traced)
    assert event["response"]["body"] == b"".join(chunks).decode()  # teed as the caller read it
    assert event["response"]["stream"]["complete"] is True


def test_custom_transport_adapter_is_traced(traced: RedisServer) -> None:
    class CannedAdapter(requests.adapters.BaseAdapter):
        def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
            response = requests.Response()
            response.status_code = 201
            response._content = b'{"id": "ch_1"}'
            response.headers["Content-Type"] = "application/json"
            response.request, response.url = request, request.url
            return response

        def close(self) -> None:
            pass

    session = requests.Session()
    session.mount("canned://", CannedAdapter())
    assert session.post("canned://vendor.test/v1/charges", data={"amount": "5"}).status_code == 201
    (event,) = _events(traced)
    assert (event["target"], event["endpoint"], event["status_code"]) == \
        ("vendor.test", "POST /v1/charges", 201)
    assert event["response"]["body"] == {"id": "ch_1"}


def test_redirect_hops_are_each_recorded(traced: RedisServer, loopback_http: LoopbackHTTP) -> None:
    assert requests.get(f"{loopback_http.url}/redirect").status_code == 200
    hop, final = sorted(_events(traced), key=lambda e: e["started_at"])
    assert (hop["endpoint"], hop["status_code"]) == ("GET /redirect", 302)
    assert (final["endpoint"], final["status_code"]) == ("GET /echo", 200)


def test_llm_calls_get_kind_llm_and_model_tags(traced: RedisServer, loopback_http: LoopbackHTTP) -> None:
    requests.post(f"{loopback_http.url}/v1/chat/completions",
                  json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 5})
    (event,) = _events(traced)
    assert event["kind"] == "llm"
    assert event["tags"]["llm.model"] == "gpt-4o-mini"
    assert event["tags"]["llm.input_tokens"] == "12"
    assert event["request"]["body"]["max_tokens"] == 5  # usage counters are not secrets


def test_calls_nest_under_the_enclosing_span(traced: RedisServer, loopback_http: LoopbackHTTP) -> None:
    @tracelab.trace
    def refund() -> int:
        return requests.get(f"{loopback_http.url}/echo").status_code

    assert refund() == 200
    call, span = _events(traced)
    assert span["kind"] == "function" and span["endpoint"].endswith("refund")
    assert call["parent_id"] == span["span_id"] and span["parent_id"] is None



def test_requests_imported_after_init_is_traced(redis_server: RedisServer,
                                                 loopback_http: LoopbackHTTP) -> None:
    from conftest import run_late_import

    events, _raw = run_late_import(redis_server, ("requests",), f"""
        import requests
        assert requests.get("{loopback_http.url}/late").status_code == 200
    """)
    assert [(e["workflow"], e["endpoint"]) for e in events] == [("late-import", "GET /late")]


def test_forked_child_records_into_its_own_spool(tracelab_home, loopback_http: LoopbackHTTP,  # type: ignore[no-untyped-def]
                                                 monkeypatch) -> None:
    """A pre-fork server (gunicorn, multiprocessing) keeps recording in every worker."""
    import os

    import orjson

    import tracelab.sdk.recorder as recorder

    monkeypatch.setattr(recorder, "_fold_spool", lambda *_: None)  # look at the raw spool
    tracelab.init(workflow_name="forked")
    try:
        requests.get(f"{loopback_http.url}/parent")
        assert tracelab.flush(5.0)
        pid = os.fork()
        if pid == 0:  # the child: record, deliver, leave without running the parent's atexit
            code = 1
            try:
                requests.get(f"{loopback_http.url}/child")
                code = 0 if tracelab.shutdown(5.0) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        tracelab.shutdown()
    spooled = {}
    for path in (tracelab_home / "spool").iterdir():
        for line in path.read_bytes().splitlines():
            event = orjson.loads(line)
            spooled[event["endpoint"]] = (event["pid"], path.name)
    assert spooled["GET /parent"][0] == os.getpid()
    assert spooled["GET /child"][0] == pid
    assert spooled["GET /child"][1] != spooled["GET /parent"][1]
