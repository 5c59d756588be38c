"""`tracelab replay` of a mail-sending program: smtplib, boto3 SES v2 and twilio in one run.

The program is recorded live against a real aiosmtpd server, the loopback SES stand-in and
the Twilio stand-in (through twilio's proxy setting), all three are stopped, and the program
is run again through the real CLI in a subprocess: every send is answered in-process from the
recording, and a changed recipient fails the replay with smtplib's own error.
"""
from __future__ import annotations

import ssl
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from conftest import free_port
from test_integration_boto3 import _SESStandIn, url_of
from test_integration_smtplib import PASSWORD, USER, _authenticate, _Mailbox
from test_integration_twilio import ACCOUNT_SID, AUTH_TOKEN, _issue_certificates, _TwilioStandIn
from test_replay_cli import env_for, last_line, replay

RUN = "mail-run-1"

AGENT = textwrap.dedent(f"""\
    import sys
    import smtplib
    from email.message import EmailMessage

    import boto3
    from botocore.config import Config
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    import tracelab

    tracelab.init("mail-agent")
    smtp_port, ses_url, twilio_proxy, to = sys.argv[1:5]
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "shop@example.test", to, "Order shipped"
    msg.set_content("It is on its way.")
    with smtplib.SMTP("127.0.0.1", int(smtp_port)) as smtp:
        smtp.login({USER!r}, {PASSWORD!r})
        print("smtp", smtp.send_message(msg))
    ses = boto3.client("sesv2", region_name="eu-west-1", endpoint_url=ses_url,
                       aws_access_key_id="AKIDMAILAGENT", aws_secret_access_key="mail-secret",
                       config=Config(retries={{"total_max_attempts": 1}}))
    reply = ses.send_email(FromEmailAddress="shop@example.test",
                           Destination={{"ToAddresses": [to]}},
                           Content={{"Simple": {{"Subject": {{"Data": "Order shipped"}},
                                                "Body": {{"Text": {{"Data": "On its way"}}}}}}}})
    print("ses", reply["MessageId"])
    client = Client({ACCOUNT_SID!r}, {AUTH_TOKEN!r},
                    http_client=TwilioHttpClient(proxy={{"https": twilio_proxy}}, timeout=10))
    print("sms", client.messages.create(to="+15558675310", from_="+15017122661",
                                        body="Shipped to " + to).sid)
    tracelab.shutdown()
""")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The agent run once live against the three servers, which are stopped afterwards."""
    tmp_path = tmp_path_factory.mktemp("mail-agent")
    home = tmp_path / "home"
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    mailbox = _Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port(),
                      authenticator=_authenticate, auth_require_tls=False)
    smtp.start()
    ses = _SESStandIn()
    ca_path, cert_path, key_path = _issue_certificates(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_path, key_path)
    sms = _TwilioStandIn(tls)
    for server in (ses, sms):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    args = [str(smtp.port), url_of(ses), f"http://127.0.0.1:{sms.server_port}"]
    try:
        out = subprocess.run(
            [sys.executable, str(agent), *args, "ada@example.test"], cwd=tmp_path,
            env=env_for(home, TRACELAB_RUN_ID=RUN, REQUESTS_CA_BUNDLE=str(ca_path)),
            capture_output=True, text=True, timeout=60)
    finally:
        smtp.stop()
        for server in (ses, sms):
            server.shutdown()
            server.server_close()
    assert out.returncode == 0, out.stderr
    assert len(mailbox.messages) == 1 and len(ses.seen) == 1 and len(sms.seen) == 1
    return {"home": home, "agent": agent, "args": args, "stdout": out.stdout,
            "servers": (mailbox, ses, sms)}


def test_mail_agent_replayed_with_every_server_down(recorded: dict[str, Any],
                                                    tmp_path: Path) -> None:
    result = replay(recorded["home"], RUN, "--", sys.executable, str(recorded["agent"]),
                    *recorded["args"], "ada@example.test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == recorded["stdout"]  # the recorded MessageId and message sid
    assert last_line(result.stderr) == "replayed 3/3 calls, 0 misses, 0 unused recordings"
    mailbox, ses, sms = recorded["servers"]
    assert (len(mailbox.messages), len(ses.seen), len(sms.seen)) == (1, 1, 1)


def test_changed_recipient_fails_the_replay_with_smtplibs_error(recorded: dict[str, Any],
                                                                tmp_path: Path) -> None:
    result = replay(recorded["home"], RUN, "--", sys.executable, str(recorded["agent"]),
                    *recorded["args"], "eve@example.test", cwd=tmp_path)
    assert result.returncode != 0
    assert "smtplib.SMTPServerDisconnected: Connection unexpectedly closed: replay miss" \
        in result.stderr
    assert 'to: ["eve@example.test"] != ["ada@example.test"]' in result.stderr
    assert "1 misses" in last_line(result.stderr)
