"""An S3-compatible ``BlobStore`` (AWS S3, MinIO, Ceph RGW, Garage...):
objects under ``prefix + key`` in one bucket, path-style URLs
(``endpoint/bucket/key``), requests signed with AWS Signature Version 4 and
sent with treq on the injected reactor (no SDK, no thread).

- ``put`` hashes the spooled file on the worker pool (the signature covers
  the payload's SHA-256), uploads it with one ``PUT``, then removes it. S3
  writes an object whole or not at all, so a crash never leaves a partial
  object that a row points to (rows are written after ``put``).
- ``open`` downloads the object into an anonymous temporary file (at most
  ``[attachments] max_bytes``) and returns it, so ranges and ETags are
  served exactly as from the filesystem.
- ``delete`` and ``exists`` are ``DELETE`` and ``HEAD``.

It passes ``BlobStoreContract`` against moto's S3 server, run as its own
process (tests/test_attachments.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
import time
from typing import IO, Any, Callable
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred

from supportchat.attachments.blobs import RunInPool, check_key

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3Error(Exception):
    """The object store answered with an unexpected status."""


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def sign_v4(method: str, url: str, headers: dict[str, str], payload_sha256: str, access_key: str,
            secret_key: str, region: str, now: float, service: str = "s3") -> dict[str, str]:
    """``headers`` plus ``host``, ``x-amz-date``, ``x-amz-content-sha256`` and
    the ``authorization`` of AWS Signature Version 4 for this request (no
    query string)."""
    parts = urlsplit(url)
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    day = amz_date[:8]
    out = {k.lower(): v.strip() for k, v in headers.items()}
    out.update({"host": parts.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256})
    names = sorted(out)
    canonical = "\n".join([
        method, quote(parts.path or "/", safe="/~"), "",
        "".join(f"{n}:{out[n]}\n" for n in names), ";".join(names), payload_sha256,
    ])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(65536):
            h.update(data)
    return h.hexdigest()


class S3BlobStore:
    """Blobs as objects of an S3-compatible bucket."""

    def __init__(self, http: Any, clock: Any, run: RunInPool, endpoint: str, bucket: str, region: str,
                 access_key: str, secret_key: str, prefix: str = "", max_bytes: int = 64 * 1024 * 1024,
                 now: Callable[[], float] = time.time) -> None:
        self._http = http  # a treq HTTPClient
        self._clock = clock
        self._run = run
        self._base = endpoint.rstrip("/") + "/" + quote(bucket, safe="")
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._prefix = prefix
        self._max_bytes = max_bytes
        self._now = now

    def _url(self, key: str) -> str:
        return f"{self._base}/{quote(self._prefix + check_key(key), safe='/')}"

    def _request(self, method: str, url: str, payload_sha256: str = EMPTY_SHA256, data: Any = None,
                 extra: dict[str, str] | None = None) -> "Deferred[Any]":
        headers = sign_v4(method, url, extra or {}, payload_sha256, self._access_key, self._secret_key,
                          self._region, self._now())
        return self._http.request(method, url, headers={k.encode(): [v.encode()] for k, v in headers.items()},
                                  data=data)

    async def _put(self, key: str, path: str) -> None:
        url = self._url(key)
        digest = await self._run(_sha256_file, path)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            response = await self._request("PUT", url, digest, f, {"content-length": str(size)})
            await response.content()
        if response.code != 200:
            raise S3Error(f"PUT answered {response.code}")
        await self._run(os.unlink, path)

    def put(self, key: str, path: str) -> "Deferred[None]":
        check_key(key)
        return Deferred.fromCoroutine(self._put(key, path))

    async def _open(self, key: str) -> tuple[IO[bytes], int] | None:
        response = await self._request("GET", self._url(key))
        if response.code == 404:
            await response.content()
            return None
        if response.code != 200:
            await response.content()
            raise S3Error(f"GET answered {response.code}")
        spool = tempfile.TemporaryFile()
        size = 0

        def write(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > self._max_bytes:
                raise S3Error("object larger than the attachment limit")
            spool.write(data)

        try:
            import treq

            await treq.collect(response, write)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool, size

    def open(self, key: str) -> "Deferred[tuple[IO[bytes], int] | None]":
        check_key(key)
        return Deferred.fromCoroutine(self._open(key))

    async def _delete(self, key: str) -> None:
        response = await self._request("DELETE", self._url(key))
        await response.content()
        if response.code not in (200, 204, 404):
            raise S3Error(f"DELETE answered {response.code}")

    def delete(self, key: str) -> "Deferred[None]":
        check_key(key)
        return Deferred.fromCoroutine(self._delete(key))

    async def _exists(self, key: str) -> bool:
        response = await self._request("HEAD", self._url(key))
        await response.content()
        if response.code not in (200, 404):
            raise S3Error(f"HEAD answered {response.code}")
        return bool(response.code == 200)

    def exists(self, key: str) -> "Deferred[bool]":
        check_key(key)
        return Deferred.fromCoroutine(self._exists(key))

    async def create_bucket(self) -> None:
        """Create the bucket (an existing one of ours is fine): for tests and first setup."""
        response = await self._request("PUT", self._base)
        await response.content()
        if response.code not in (200, 409):
            raise S3Error(f"PUT bucket answered {response.code}")
