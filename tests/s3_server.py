"""A real S3-compatible server on loopback for the object-store tests and bench.

`moto_server` (moto in server mode) speaks the S3 wire protocol over HTTP, so the code under test
talks to it exactly as it would talk to AWS, MinIO or any other S3-compatible store: nothing of
TraceLab is faked, only the vendor's service is replaced by a local one.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from conftest import free_port

ACCESS_KEY = "tracelab-test"
SECRET_KEY = "tracelab-test-secret"
REGION = "us-east-1"


@dataclass
class S3Endpoint:
    """Where the loopback S3 server listens and the environment a client needs to reach it."""

    url: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def store_uri(self, prefix: str) -> str:
        """The `TRACELAB_STORE` value of a store under `prefix` in this endpoint's bucket."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 S3 client on this endpoint (to inspect the bucket beside the code under test)."""
        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )


def _moto_server_binary() -> str:
    """`moto_server` from this interpreter's environment first (the venv), then PATH."""
    local = Path(sys.executable).with_name("moto_server")
    if local.exists():
        return str(local)
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError('moto_server is not installed: run `make install` (moto[server])')
    return found


def _wait_until_answering(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout_s}s")


@contextmanager
def moto_s3(bucket: str = "tracelab") -> Iterator[S3Endpoint]:
    """Start `moto_server` on a free 127.0.0.1 port, create `bucket`, stop the server on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [_moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_answering(url, proc)
        endpoint = S3Endpoint(url=url, bucket=bucket, env={
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "TRACELAB_S3_ENDPOINT": url,
        })
        endpoint.client().create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
