"""The `pyarrow.fs` file system behind a store URI, configured from the usual environment.

`pafs.FileSystem.from_uri("s3://…")` alone reaches AWS only: an S3-compatible server (MinIO,
Ceph, moto, R2, …) needs an endpoint, and a missing bucket would only show up as an obscure
error at the first write. So `s3://` URIs are built here from the variables every S3 tool reads
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
`AWS_DEFAULT_REGION`) plus `TRACELAB_S3_ENDPOINT` (else `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`), and the bucket is checked once, with an error that says what to fix.
Every other URI (`file://`, `gs://`, `hdfs://`, an `s3://` URI carrying its own `?options`)
goes to `pafs.FileSystem.from_uri` unchanged.
"""
from __future__ import annotations

import threading
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from tracelab.config import env_str

ENDPOINT_VARIABLES = ("TRACELAB_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
# S3-compatible servers ignore the region but the request signature needs one.
DEFAULT_ENDPOINT_REGION = "us-east-1"
CONNECT_TIMEOUT_S = 5.0


class ObjectStoreError(ValueError):
    """The store's object storage cannot be used as configured (no bucket, no endpoint, …)."""


_CHECKED: dict[tuple[str | None, ...], pafs.FileSystem] = {}
_CHECKED_LOCK = threading.Lock()


def filesystem_from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) of a store URI; `s3://bucket/prefix` from the environment.

    Raises `ObjectStoreError` when an S3 endpoint cannot be reached or the bucket does not exist
    (checked once per configuration in a process, so queries do not pay a request each).
    """
    parts = urlsplit(uri)
    if parts.scheme != "s3" or parts.query:
        return pafs.FileSystem.from_uri(uri)
    bucket = parts.netloc
    if not bucket:
        raise ObjectStoreError(f"{uri!r} names no bucket: use s3://<bucket>/<prefix>")
    path = f"{bucket}/{parts.path.strip('/')}".rstrip("/")
    endpoint = _first_set(ENDPOINT_VARIABLES)
    region = _first_set(REGION_VARIABLES)
    key = (endpoint, region, env_str("AWS_ACCESS_KEY_ID"), env_str("AWS_SECRET_ACCESS_KEY"),
           env_str("AWS_SESSION_TOKEN"), bucket)
    with _CHECKED_LOCK:
        fs = _CHECKED.get(key)
    if fs is None:
        fs = _s3(bucket, endpoint, region)
        _check_bucket(fs, bucket, endpoint)
        with _CHECKED_LOCK:
            _CHECKED[key] = fs
    return fs, path


def _first_set(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env_str(name)
        if value:
            return value
    return None


def _s3(bucket: str, endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    # Delayed open: a file smaller than one upload part (the writer's are) goes in a single
    # PutObject at close instead of create / upload part / complete: one round trip, not three.
    options: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_S,
                                  "allow_delayed_open": True}
    if endpoint:
        target = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if target.scheme not in ("http", "https") or not target.netloc:
            raise ObjectStoreError(
                f"TRACELAB_S3_ENDPOINT={endpoint!r} is not an endpoint: use "
                "http(s)://host[:port]")
        options["endpoint_override"] = target.netloc
        options["scheme"] = target.scheme
        options["region"] = region or DEFAULT_ENDPOINT_REGION
    elif region:
        options["region"] = region
    else:  # AWS itself: ask where the bucket is, as `FileSystem.from_uri` would
        try:
            options["region"] = pafs.resolve_s3_region(bucket)
        except OSError as exc:
            raise ObjectStoreError(
                f"cannot find the region of bucket {bucket!r}: {exc}; set AWS_REGION, or "
                "TRACELAB_S3_ENDPOINT for an S3-compatible server") from exc
    access_key, secret_key = env_str("AWS_ACCESS_KEY_ID"), env_str("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        options["access_key"] = access_key
        options["secret_key"] = secret_key
        token = env_str("AWS_SESSION_TOKEN")
        if token:
            options["session_token"] = token
    return pafs.S3FileSystem(**options)


def _check_bucket(fs: pafs.FileSystem, bucket: str, endpoint: str | None) -> None:
    where = endpoint or "AWS S3"
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise ObjectStoreError(f"cannot reach bucket {bucket!r} at {where}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise ObjectStoreError(
            f"bucket {bucket!r} does not exist at {where}: create it first (TraceLab never "
            "creates buckets)")
