"""Where attachment bytes live: the ``BlobStore`` seam.

A blob is written once from a complete local file (``put``: the store
takes the file over) under a key the caller chooses (the SHA-256 of the
bytes, so equal uploads share one blob), read back as a file object
(``open``), and deleted when no attachment refers to it any more.

- :class:`FileBlobStore`: the local filesystem, under the data directory.
  ``put`` fsyncs the spooled file, renames it into place
  (``ab/cdef...``) and fsyncs the directory, so a crash leaves either the
  whole blob or none: a message never points at half a file. Blocking
  work runs through the ``run`` callable (the attachment worker pool).
- :class:`MemoryBlobStore`: the twin (bytes in a dict).

Both pass ``BlobStoreContract`` (tests/test_attachments.py).
"""

from __future__ import annotations

import io
import os
import re
from typing import IO, Any, Callable, Protocol

from twisted.internet.defer import Deferred, succeed

KEY = re.compile(r"^[0-9a-f]{64}(\.thumb)?$")

RunInPool = Callable[..., "Deferred[Any]"]


class BlobStore(Protocol):
    def put(self, key: str, path: str) -> "Deferred[None]":
        """Store the complete file at ``path`` under ``key`` (the store
        takes the file: it is moved or removed). Putting a key that exists
        keeps the stored blob."""

    def open(self, key: str) -> "Deferred[tuple[IO[bytes], int] | None]":
        """(a binary file object positioned at 0, its size), or None."""

    def delete(self, key: str) -> "Deferred[None]":
        """Remove the blob; a missing key is not an error."""

    def exists(self, key: str) -> "Deferred[bool]": ...


def check_key(key: str) -> str:
    if not KEY.match(key):
        raise ValueError("a blob key is a SHA-256 in hex, with an optional .thumb")
    return key


class MemoryBlobStore:
    """The twin: every blob's bytes in a dict."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, key: str, path: str) -> "Deferred[None]":
        check_key(key)
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        self.blobs.setdefault(key, data)
        return succeed(None)

    def open(self, key: str) -> "Deferred[tuple[IO[bytes], int] | None]":
        data = self.blobs.get(check_key(key))
        return succeed(None if data is None else (io.BytesIO(data), len(data)))

    def delete(self, key: str) -> "Deferred[None]":
        self.blobs.pop(check_key(key), None)
        return succeed(None)

    def exists(self, key: str) -> "Deferred[bool]":
        return succeed(check_key(key) in self.blobs)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Content-addressed files under ``root`` (``root/ab/abcdef...``)."""

    def __init__(self, root: str, run: RunInPool) -> None:
        self.root = root
        self._run = run
        os.makedirs(root, exist_ok=True)

    def path(self, key: str) -> str:
        check_key(key)
        return os.path.join(self.root, key[:2], key)

    def spool_dir(self) -> str:
        """Where uploads are spooled: on the same filesystem, so ``put`` is a rename."""
        path = os.path.join(self.root, "tmp")
        os.makedirs(path, exist_ok=True)
        return path

    def _put(self, key: str, src: str) -> None:
        final = self.path(key)
        folder = os.path.dirname(final)
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(final):
            os.unlink(src)
            return
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(src, final)
        _fsync_dir(folder)

    def put(self, key: str, path: str) -> "Deferred[None]":
        return self._run(self._put, key, path)

    def open(self, key: str) -> "Deferred[tuple[IO[bytes], int] | None]":
        # Opening a local file is what twisted.web.static does on the reactor too.
        try:
            f = open(self.path(key), "rb")
        except FileNotFoundError:
            return succeed(None)
        return succeed((f, os.fstat(f.fileno()).st_size))

    def _delete(self, key: str) -> None:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass

    def delete(self, key: str) -> "Deferred[None]":
        return self._run(self._delete, key)

    def exists(self, key: str) -> "Deferred[bool]":
        return succeed(os.path.exists(self.path(key)))

    def clean_spool(self, older_than: float, now: float) -> int:
        """Remove spooled files left by a crash (blocking; at start). Returns how many."""
        removed = 0
        folder = self.spool_dir()
        for name in os.listdir(folder):
            p = os.path.join(folder, name)
            try:
                if os.stat(p).st_mtime < now - older_than:
                    os.unlink(p)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
