"""Attachments without a server: the multipart reader, type sniffing, the
image pipeline (Pillow) on real files, signed links on a Clock, the blob
and metadata stores (one contract, twin and real), and the clamd client
against a socket server speaking clamd's protocol and a real clamd."""

from __future__ import annotations

import hashlib
import io
import os
import atexit
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from PIL import Image
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.attachments.blobs import FileBlobStore, MemoryBlobStore
from supportchat.attachments.links import LinkSigner
from supportchat.attachments.models import Attachment, AttachmentError, Limits
from supportchat.attachments.scan import ClamdScanner, ScannerUnavailable, SignatureScanner, parse_answer
from supportchat.attachments.store import MemoryAttachmentStore, SqlAttachmentStore, TooManyAttachments
from supportchat.attachments.upload import MultipartReader, clean_name, process_upload, sniff
from supportchat.http.attachments_api import parse_range
from supportchat.storage.models import NotFound
from tests import attachment_files as files
from tests.dbs import StoreContract, threadless_db


def run_upload(testcase: unittest.TestCase, data: bytes, filename: str = "f.bin", declared: str = "",
               limits: Limits = Limits(), scanner: Any = None, accept_unscanned: bool = False) -> Any:
    """process_upload on a multipart body of ``data``, in a fresh spool directory."""
    body, ctype = files.multipart([("file", filename, data, declared)])
    spool = testcase.mktemp()
    os.makedirs(spool)
    testcase.spool = spool  # type: ignore[attr-defined]
    boundary = ctype.split("boundary=")[1].encode()
    return process_upload(io.BytesIO(body), boundary, limits, spool, scanner, accept_unscanned)


class MultipartTests(unittest.TestCase):
    def parts(self, body: bytes, boundary: bytes, chunk: int) -> list[tuple[dict[str, str], bytes]]:
        import supportchat.attachments.upload as upload

        old = upload.CHUNK
        upload.CHUNK = chunk
        try:
            return [(h, b"".join(c)) for h, c in MultipartReader(io.BytesIO(body), boundary).parts()]
        finally:
            upload.CHUNK = old

    def test_parts_whatever_the_chunk_size(self) -> None:
        """Fields and a file split across reads at every position come out
        whole, a CRLF-and-dashes lookalike inside the data included."""
        payload = b"line\r\n--not-the-boundary\r\n" + bytes(range(256)) * 3
        body, ctype = files.multipart([("conversation", None, b"c1", ""), ("file", "a.txt", payload, "text/plain")])
        boundary = ctype.split("boundary=")[1].encode()
        for chunk in (1, 2, 3, 7, 64, 4096):
            got = self.parts(body, boundary, chunk)
            self.assertEqual([b for _, b in got], [b"c1", payload], chunk)
            self.assertIn('filename="a.txt"', got[1][0]["content-disposition"])

    def test_truncated_body_is_an_error(self) -> None:
        """A body that ends inside a part is refused (400), not stored."""
        body, _ = files.multipart([("file", "a.txt", b"hello", "")])
        with self.assertRaises(AttachmentError) as e:
            process_upload(io.BytesIO(body[:-30]), b"----scTestBoundary7MA4YWxk", Limits(), self.mktemp_dir(),
                           None, False)
        self.assertEqual(e.exception.status, 400)

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path


class SniffTests(unittest.TestCase):
    def test_types_from_bytes(self) -> None:
        """Signatures decide, never the declared type; markup and binaries are not text."""
        self.assertEqual(sniff(files.image("PNG")), "image/png")
        self.assertEqual(sniff(files.image("JPEG")), "image/jpeg")
        self.assertEqual(sniff(files.image("GIF")), "image/gif")
        self.assertEqual(sniff(files.image("WEBP")), "image/webp")
        self.assertEqual(sniff(files.PDF), "application/pdf")
        self.assertEqual(sniff("Grüße, 你好\n".encode()), "text/plain")
        self.assertIsNone(sniff(files.ELF))
        self.assertIsNone(sniff(b"MZ\x90\x00\x03\x00\x00\x00"))
        self.assertIsNone(sniff(b'<svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>'))
        self.assertIsNone(sniff(b"\xef\xbb\xbf  <!DOCTYPE html><html>"))
        self.assertIsNone(sniff(b"hello <script>alert(1)</script>"))

    def test_clean_names(self) -> None:
        """Paths, controls and bidi overrides go; an empty name gets a default by type."""
        self.assertEqual(clean_name("../../etc/passwd", "text/plain"), "passwd")
        self.assertEqual(clean_name("C:\\Users\\a\\photo.png", "image/png"), "photo.png")
        self.assertEqual(clean_name("inv\u202eoice\x00.pdf", "application/pdf"), "invoice.pdf")
        self.assertEqual(clean_name("", "image/jpeg"), "image.jpg")
        self.assertEqual(clean_name(None, "application/pdf"), "document.pdf")


class PipelineTests(unittest.TestCase):
    """process_upload on real files (what the worker pool runs)."""

    def assertSpoolHolds(self, *paths: str | None) -> None:
        self.assertEqual(sorted(os.listdir(self.spool)), sorted(os.path.basename(p) for p in paths if p))

    def refused(self, data: bytes, status: int, code: str, **kw: Any) -> AttachmentError:
        with self.assertRaises(AttachmentError) as e:
            run_upload(self, data, **kw)
        self.assertEqual((e.exception.status, e.exception.code), (status, code))
        self.assertSpoolHolds()  # nothing left behind
        return e.exception

    def test_png_with_gps_comes_back_without_it(self) -> None:
        """The EXIF (camera, GPS) of a PNG is gone from the stored bytes;
        size and sha256 describe those bytes; a thumbnail is made."""
        original = files.png_with_gps((64, 48))
        self.assertIn(34853, Image.open(io.BytesIO(original)).getexif())
        out = run_upload(self, original, "holiday.png")
        self.assertSpoolHolds(out.path, out.thumb_path)
        stored = open(out.path, "rb").read()
        im = Image.open(io.BytesIO(stored))
        self.assertEqual(dict(im.getexif()), {})
        self.assertNotIn(b"SecretCam", stored)
        self.assertEqual((out.width, out.height, out.content_type, out.name), (64, 48, "image/png", "holiday.png"))
        import hashlib

        self.assertEqual((out.size, out.sha256), (len(stored), hashlib.sha256(stored).hexdigest()))
        thumb = Image.open(out.thumb_path)
        self.assertLessEqual(max(thumb.size), 320)

    def test_jpeg_orientation_applied_and_exif_gone(self) -> None:
        """A JPEG rotated by its EXIF orientation is stored rotated, with no EXIF."""
        out = run_upload(self, files.jpeg_with_gps((60, 20), orientation=6), "cam.jpg")
        im = Image.open(out.path)
        self.assertEqual(im.size, (20, 60))
        self.assertEqual(dict(im.getexif()), {})
        self.assertNotIn(b"SecretCam", open(out.path, "rb").read())

    def test_polyglot_is_reencoded(self) -> None:
        """A PNG that is also a ZIP is stored as a PNG only: no archive inside."""
        import zipfile

        poly = files.polyglot_png_zip()
        self.assertTrue(zipfile.is_zipfile(io.BytesIO(poly)))
        out = run_upload(self, poly, "poly.png")
        stored = open(out.path, "rb").read()
        self.assertFalse(zipfile.is_zipfile(io.BytesIO(stored)))
        self.assertNotIn(b"payload.html", stored)
        self.assertTrue(stored.endswith(b"IEND\xaeB`\x82"))

    def test_every_image_format(self) -> None:
        """JPEG, PNG (with alpha), GIF (animated, comment dropped) and WebP are re-encoded in their format."""
        for data, ctype in ((files.image("JPEG"), "image/jpeg"), (files.image("PNG", mode="RGBA"), "image/png"),
                            (files.animated_gif(3), "image/gif"), (files.image("WEBP"), "image/webp")):
            out = run_upload(self, data, "x")
            self.assertEqual(out.content_type, ctype)
            im = Image.open(out.path)
            self.assertEqual(Image.MIME[im.format], ctype)
            if ctype == "image/gif":
                self.assertEqual(im.n_frames, 3)
                self.assertNotIn(b"secret", open(out.path, "rb").read())
            os.unlink(out.path)
            os.unlink(out.thumb_path)

    def test_pixel_limits(self) -> None:
        """A 20,000 x 20,000 image and one over the configured limit are
        refused from their header (422), before their pixels are decoded."""
        self.refused(files.png_header_only(20000, 20000), 422, "too_many_pixels")
        self.refused(files.png_header_only(6000, 5000), 422, "too_many_pixels")
        self.refused(files.image("PNG", (200, 100)), 422, "too_many_pixels", limits=Limits(max_pixels=10000))

    def test_corrupt_image(self) -> None:
        """An image whose data is broken is 422 corrupt_image."""
        self.refused(files.corrupt_png(), 422, "corrupt_image")

    def test_types_refused_whatever_was_declared(self) -> None:
        """An executable declared image/png, SVG and HTML are 415; a type
        taken off the allow-list is 415 too."""
        self.refused(files.ELF, 415, "unsupported_type", declared="image/png", filename="cat.png")
        self.refused(b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "unsupported_type", declared="image/svg+xml")
        self.refused(b"<html><script>alert(1)</script></html>", 415, "unsupported_type", declared="text/plain")
        self.refused(b"caf\xe9 latin-1 is not UTF-8", 415, "unsupported_type")
        self.refused(files.PDF, 415, "unsupported_type", limits=Limits(allowed_types=("image/png",)))

    def test_pdf_and_text_are_stored_as_sent(self) -> None:
        """Files that are not images are stored byte for byte, no thumbnail."""
        for data, ctype in ((files.PDF, "application/pdf"), ("hello\nnǐ hǎo\n".encode(), "text/plain")):
            out = run_upload(self, data, "doc")
            self.assertEqual((out.content_type, out.thumb_path, out.width), (ctype, None, None))
            self.assertEqual(open(out.path, "rb").read(), data)
            os.unlink(out.path)

    def test_size_limit_while_reading(self) -> None:
        """One byte over max_bytes is 413; exactly max_bytes is stored."""
        limits = Limits(max_bytes=2048)
        self.refused(b"a" * 2049, 413, "too_large", limits=limits)
        out = run_upload(self, b"a" * 2048, limits=limits)
        self.assertEqual(out.size, 2048)

    def test_scanner_verdicts(self) -> None:
        """Infected: 422 infected; scanner down: 503, or stored and flagged when accepting."""
        twin = SignatureScanner({files.EICAR: "Eicar-Test-Signature"})
        self.refused(files.EICAR, 422, "infected", scanner=twin)
        self.assertEqual(run_upload(self, b"clean text", scanner=twin).scan, "clean")
        down = SignatureScanner({}, down=True)
        self.refused(b"some text", 503, "scanner_unavailable", scanner=down)
        self.assertEqual(run_upload(self, b"some text", scanner=down, accept_unscanned=True).scan, "unavailable")

    def test_no_file_field(self) -> None:
        """A form without 'file' is 400."""
        body, ctype = files.multipart([("other", "x.txt", b"hi", "")])
        with self.assertRaises(AttachmentError) as e:
            process_upload(io.BytesIO(body), ctype.split("boundary=")[1].encode(), Limits(), tempfile.gettempdir(),
                           None, False)
        self.assertEqual(e.exception.status, 400)


class LinkTests(unittest.TestCase):
    def test_links_expire_and_resist_tampering(self) -> None:
        """A link works until its exp (Clock time), then 'expired'; any change
        of id, variant, exp or sig makes it invalid; another secret's links fail."""
        clock = Clock()
        clock.advance(1_000_000)
        signer = LinkSigner("s" * 40, 900, clock.seconds)
        url = signer.url("a123")
        path, _, query = url.partition("?")
        args = dict(p.split("=") for p in query.split("&"))
        self.assertEqual(path, "/api/v1/attachments/a123")
        self.assertTrue(signer.check("a123", "file", args["exp"], args["sig"]))
        self.assertFalse(signer.check("a124", "file", args["exp"], args["sig"]))
        self.assertFalse(signer.check("a123", "thumbnail", args["exp"], args["sig"]))
        self.assertFalse(signer.check("a123", "file", str(int(args["exp"]) + 60), args["sig"]))
        self.assertFalse(signer.check("a123", "file", args["exp"], args["sig"][:-1] + "A"))
        self.assertFalse(LinkSigner("t" * 40, 900, clock.seconds).check("a123", "file", args["exp"], args["sig"]))
        clock.advance(900 + 60)
        self.assertIsNone(signer.check("a123", "file", args["exp"], args["sig"]))

    def test_decorate_mints_links_per_response(self) -> None:
        """A stored message's attachments get url and thumbnail_url (null
        without a thumbnail); the internal flag is not shown."""
        signer = LinkSigner("s" * 40, 900, Clock().seconds, "https://chat.example")
        frame = {"type": "message", "attachments": [
            {"id": "a1", "name": "p.png", "content_type": "image/png", "size": 5, "width": 1, "height": 2,
             "thumbnail": True},
            {"id": "a2", "name": "d.pdf", "content_type": "application/pdf", "size": 9, "width": None,
             "height": None, "thumbnail": False}]}
        out = signer.decorate(frame)
        self.assertTrue(out["attachments"][0]["url"].startswith("https://chat.example/api/v1/attachments/a1?exp="))
        self.assertIn("/api/v1/attachments/a1/thumbnail?", out["attachments"][0]["thumbnail_url"])
        self.assertIsNone(out["attachments"][1]["thumbnail_url"])
        self.assertEqual(set(out["attachments"][1]), {"id", "name", "content_type", "size", "width", "height", "url",
                                                      "thumbnail_url"})
        self.assertIn("thumbnail", frame["attachments"][0])  # the stored form is not changed


class RangeTests(unittest.TestCase):
    def test_ranges(self) -> None:
        """Single byte ranges, suffixes, open ends; unsatisfiable ones; ignored ones."""
        self.assertEqual(parse_range(b"bytes=0-9", 100), (0, 9))
        self.assertEqual(parse_range(b"bytes=90-", 100), (90, 99))
        self.assertEqual(parse_range(b"bytes=-10", 100), (90, 99))
        self.assertEqual(parse_range(b"bytes=50-1000", 100), (50, 99))
        self.assertIs(parse_range(b"bytes=100-", 100), False)
        self.assertIsNone(parse_range(None, 100))
        self.assertIsNone(parse_range(b"bytes=0-1,5-6", 100))
        self.assertIsNone(parse_range(b"items=0-1", 100))
        self.assertIsNone(parse_range(b"bytes=x-y", 100))


# -- the blob store: one contract, two implementations ------------------------------------
def _spooled(testcase: unittest.TestCase, data: bytes) -> str:
    fd, path = tempfile.mkstemp(dir=testcase.spool_dir)  # type: ignore[attr-defined]
    os.write(fd, data)
    os.close(fd)
    return path


class BlobStoreContract:
    """What every BlobStore does (tests yield Deferreds: the twin's fire at
    once, the filesystem's and S3's when their work is done)."""

    def make_store(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> Any:
        self.spool_dir = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(self.spool_dir)
        self.store = self.make_store()

    @inlineCallbacks
    def read(self, key: str) -> Any:
        opened = yield self.store.open(key)
        if opened is None:
            return None
        f, size = opened
        with f:
            data = f.read()
        self.assertEqual(size, len(data))  # type: ignore[attr-defined]
        return data

    @inlineCallbacks
    def test_put_open_delete(self) -> Any:
        """A put blob reads back whole, the spooled file is taken over, delete removes it."""
        key = "ab" * 32
        path = _spooled(self, b"hello blob")
        yield self.store.put(key, path)
        self.assertFalse(os.path.exists(path))  # type: ignore[attr-defined]
        self.assertEqual((yield self.read(key)), b"hello blob")  # type: ignore[attr-defined]
        self.assertTrue((yield self.store.exists(key)))  # type: ignore[attr-defined]
        yield self.store.delete(key)
        self.assertIsNone((yield self.read(key)))  # type: ignore[attr-defined]
        self.assertFalse((yield self.store.exists(key)))  # type: ignore[attr-defined]
        yield self.store.delete(key)

    @inlineCallbacks
    def test_same_key_twice_keeps_one(self) -> Any:
        """Content-addressed: a second put of a key keeps the blob and takes the file."""
        key = "cd" * 32
        yield self.store.put(key, _spooled(self, b"one"))
        second = _spooled(self, b"one")
        yield self.store.put(key, second)
        self.assertFalse(os.path.exists(second))  # type: ignore[attr-defined]
        self.assertEqual((yield self.read(key)), b"one")  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_large_blob(self) -> Any:
        """A blob of several MiB comes back byte for byte."""
        data = os.urandom(3 * 1024 * 1024 + 7)
        key = hashlib.sha256(data).hexdigest()
        yield self.store.put(key, _spooled(self, data))
        self.assertEqual((yield self.read(key)), data)  # type: ignore[attr-defined]
        yield self.store.delete(key)

    def test_keys_are_checked(self) -> Any:
        """Keys are SHA-256 hex (optionally .thumb): no path can be named."""
        for bad in ("../etc/passwd", "AB" * 32, "ab" * 31, ""):
            self.assertRaises(ValueError, self.store.open, bad)  # type: ignore[attr-defined]
        return self.read("ef" * 32 + ".thumb").addCallback(self.assertIsNone)  # type: ignore[attr-defined]


class MemoryBlobStoreTests(BlobStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryBlobStore()


class FileBlobStoreTests(BlobStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        self.root = self.mktemp()
        return FileBlobStore(self.root, lambda f, *a: maybeDeferred(f, *a))

    def test_layout_and_no_partial_files(self) -> None:
        """Blobs live at root/ab/abab...; nothing else is left in the tree
        (the rename is the commit: no temporary file beside a blob)."""
        key = "ab" * 32
        self.successResultOf(self.store.put(key, _spooled(self, b"x" * 100_000)))  # inline "pool"
        self.assertEqual(os.listdir(os.path.join(self.root, "ab")), [key])
        self.assertEqual(os.path.getsize(os.path.join(self.root, "ab", key)), 100_000)

    def test_clean_spool(self) -> None:
        """Spooled files older than the limit (a crash's leftovers) are removed at start."""
        spool = self.store.spool_dir()
        old = os.path.join(spool, "upload-old.part")
        open(old, "wb").close()
        os.utime(old, (1000, 1000))
        fresh = os.path.join(spool, "upload-new.part")
        open(fresh, "wb").close()
        self.assertEqual(self.store.clean_spool(3600, time.time()), 1)
        self.assertEqual(os.listdir(spool), ["upload-new.part"])


MOTO_SERVER = os.path.join(os.path.dirname(sys.executable), "moto_server")


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process ends, however it ends
    (trial -j workers may exit without running atexit)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
_moto: dict[str, Any] = {}


def moto_endpoint() -> str:
    """moto's S3 server for this test run, started on first use as its own
    process and stopped at exit (the most faithful S3 implementation that
    installs from the package registries)."""
    if "url" not in _moto:
        if not os.path.exists(MOTO_SERVER):
            raise unittest.SkipTest("moto_server is not installed (requirements/test.txt: moto[s3], flask)")
        from tests.support import free_port

        import select

        port = free_port()
        proc = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        atexit.register(lambda: (proc.terminate(), proc.wait(10)))
        # Wait for its "Running on" line (read as it comes, bounded), then keep
        # draining its log so the pipe never fills.
        assert proc.stdout is not None
        out, deadline = b"", time.monotonic() + 30
        while b"Running on" not in out:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
            chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise RuntimeError("moto_server did not start: " + out.decode(errors="replace")[-500:])
            out += chunk
        stdout = proc.stdout
        threading.Thread(target=lambda: [None for _ in iter(lambda: stdout.read(4096), b"")], daemon=True).start()
        _moto["url"] = f"http://127.0.0.1:{port}"
    return str(_moto["url"])


class S3BlobStoreTests(BlobStoreContract, unittest.TestCase):
    """S3BlobStore over real HTTP (treq) against moto's S3 server. (moto
    does not verify signatures without its IAM emulation; SigV4Tests checks
    the signature against AWS's published example instead.)"""

    def make_store(self) -> Any:
        from twisted.internet import reactor

        from supportchat.attachments.s3 import S3BlobStore
        from tests.support import http_client

        self.bucket = f"sc-test-{os.getpid()}-{id(self)}"
        return S3BlobStore(http_client(), reactor, lambda f, *a: maybeDeferred(f, *a), moto_endpoint(),
                           self.bucket, "us-east-1", "testing", "testing-secret", prefix="blobs/")

    def setUp(self) -> Any:
        super().setUp()
        return Deferred.fromCoroutine(self.store.create_bucket())


class SigV4Tests(unittest.TestCase):
    def test_aws_documented_example(self) -> None:
        """The signature of AWS's documented example request (GET an object
        with a Range header, 2013-05-24, bucket examplebucket) is the one
        AWS publishes."""
        from supportchat.attachments.s3 import EMPTY_SHA256, sign_v4

        headers = sign_v4("GET", "https://examplebucket.s3.amazonaws.com/test.txt", {"range": "bytes=0-9"},
                          EMPTY_SHA256, "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                          "us-east-1", 1369353600.0)
        self.assertTrue(headers["authorization"].endswith(
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"), headers["authorization"])


# -- the metadata store: one contract, twin and SQL -------------------------------------
def attachment(aid: str, uploader: str = "c:alice", created: float = 1000.0, **kw: Any) -> Attachment:
    values: dict[str, Any] = dict(
        id=aid, uploader=uploader, name=f"{aid}.png", content_type="image/png", size=10, sha256="ab" * 32,
        width=4, height=3, blob_key="ab" * 32, thumb_key="ab" * 32 + ".thumb", thumb_type="image/png",
        scan="unscanned", created_at=created,
    )
    values.update(kw)
    return Attachment(**values)


class AttachmentStoreContract(StoreContract):
    def refused(self, d: Any, kind: type) -> Exception:
        return self.failureResultOf(d, kind).value  # type: ignore[attr-defined]

    def test_add_get(self) -> None:
        """A row reads back equal; an unknown id is None."""
        a = attachment("a1")
        self.ok(self.store.add(a))
        self.assertEqual(self.ok(self.store.get("a1")), a)  # type: ignore[attr-defined]
        self.assertIsNone(self.ok(self.store.get("nope")))  # type: ignore[attr-defined]

    def test_claim_once_by_the_uploader(self) -> None:
        """The uploader's message claims its uploads (in order); the same
        message again claims them again; any other message, another user
        and an unknown id all get NotFound, and nothing is claimed then."""
        for aid in ("a1", "a2", "a3"):
            self.ok(self.store.add(attachment(aid)))
        got = self.ok(self.store.claim(["a2", "a1"], "c:alice", "c:alice\nk1", "conv1", 2000.0, 100))
        self.assertEqual([a.id for a in got], ["a2", "a1"])  # type: ignore[attr-defined]
        self.assertEqual(got[0].conversation_id, "conv1")  # type: ignore[attr-defined]
        again = self.ok(self.store.claim(["a2", "a1"], "c:alice", "c:alice\nk1", "conv1", 2001.0, 100))
        self.assertEqual([a.claimed_at for a in again], [2000.0, 2000.0])  # type: ignore[attr-defined]
        self.refused(self.store.claim(["a1"], "c:alice", "c:alice\nk2", "conv1", 2002.0, 100), NotFound)
        self.refused(self.store.claim(["a3"], "c:bob", "c:bob\nk1", "conv1", 2002.0, 100), NotFound)
        self.refused(self.store.claim(["a3", "zz"], "c:alice", "c:alice\nk3", "conv1", 2002.0, 100), NotFound)
        self.assertIsNone(self.ok(self.store.get("a3")).claim)  # type: ignore[attr-defined]

    def test_upload_meant_for_a_conversation(self) -> None:
        """An upload made for one conversation cannot be sent to another."""
        self.ok(self.store.add(attachment("a1", conversation_id="conv1")))
        self.refused(self.store.claim(["a1"], "c:alice", "c:alice\nk", "conv2", 1.0, 100), NotFound)
        self.ok(self.store.claim(["a1"], "c:alice", "c:alice\nk", "conv1", 1.0, 100))

    def test_per_conversation_limit(self) -> None:
        """Past per_conversation claimed attachments, a claim is refused."""
        for aid in ("a1", "a2", "a3"):
            self.ok(self.store.add(attachment(aid)))
        self.ok(self.store.claim(["a1", "a2"], "c:alice", "c:alice\nk1", "conv1", 1.0, 2))
        self.refused(self.store.claim(["a3"], "c:alice", "c:alice\nk2", "conv1", 1.0, 2), TooManyAttachments)
        self.ok(self.store.claim(["a3"], "c:alice", "c:alice\nk2", "conv2", 1.0, 2))

    def test_orphans_delete_and_shared_blobs(self) -> None:
        """Unclaimed rows older than the cut are orphans, oldest first;
        deleting one returns the blob keys no other row holds; a claimed
        row is never deleted."""
        self.ok(self.store.add(attachment("old", created=100.0)))
        self.ok(self.store.add(attachment("twin", created=150.0)))
        self.ok(self.store.add(attachment("own", created=120.0, blob_key="cd" * 32, thumb_key=None)))
        self.ok(self.store.add(attachment("new", created=900.0, blob_key="ef" * 32)))
        self.ok(self.store.claim(["twin"], "c:alice", "c:alice\nk", "conv1", 200.0, 100))
        self.assertEqual([a.id for a in self.ok(self.store.orphans(500.0, 10))], ["old", "own"])  # type: ignore
        self.assertEqual(self.ok(self.store.delete("old")), [])  # type: ignore[attr-defined]
        self.assertEqual(self.ok(self.store.delete("own")), ["cd" * 32])  # type: ignore[attr-defined]
        self.assertEqual(self.ok(self.store.delete("twin")), [])  # type: ignore[attr-defined]
        self.assertIsNotNone(self.ok(self.store.get("twin")))  # type: ignore[attr-defined]

    def test_bytes_since(self) -> None:
        """A user's stored bytes in a window."""
        self.ok(self.store.add(attachment("a1", created=100.0, size=5)))
        self.ok(self.store.add(attachment("a2", created=200.0, size=7)))
        self.ok(self.store.add(attachment("b1", uploader="c:bob", created=200.0, size=11)))
        self.assertEqual(self.ok(self.store.bytes_since("c:alice", 150.0)), 7)  # type: ignore[attr-defined]
        self.assertEqual(self.ok(self.store.bytes_since("c:alice", 0.0)), 12)  # type: ignore[attr-defined]


class MemoryAttachmentStoreTests(AttachmentStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryAttachmentStore()


class SqliteAttachmentStoreTests(AttachmentStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return SqlAttachmentStore(threadless_db(self, "sqlite"))


class PostgresAttachmentStoreTests(AttachmentStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return SqlAttachmentStore(threadless_db(self, "postgresql"))


class MariadbAttachmentStoreTests(AttachmentStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return SqlAttachmentStore(threadless_db(self, "mariadb"))


# -- the service on a Clock, with the twins ------------------------------------------------
class ServiceTests(unittest.TestCase):
    """AttachmentService on task.Clock with MemoryAttachmentStore,
    MemoryBlobStore and the work run inline."""

    def setUp(self) -> None:
        from supportchat.attachments.service import AttachmentService, Policy
        from supportchat.metrics import Metrics

        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.spool = self.mktemp()
        os.makedirs(self.spool)
        self.store, self.blobs = MemoryAttachmentStore(), MemoryBlobStore()

        async def can_read(conversation: str, key: str, role: str) -> bool:
            return conversation == "conv1"

        self.metrics = Metrics()
        self.service = AttachmentService(
            self.clock, self.store, self.blobs, lambda f, *a: maybeDeferred(f, *a), self.spool, Limits(), None,
            LinkSigner("s" * 40, 900, self.clock.seconds), self.metrics, can_read,
            Policy(upload_rate=1.0, upload_burst=2, daily_bytes=5000, orphan_grace=3600))

    def upload(self, user: str, data: bytes) -> Any:
        from supportchat.auth import Principal

        body, ctype = files.multipart([("file", "x.png", data, "image/png")])
        d = Deferred.fromCoroutine(
            self.service.upload(Principal(user, "customer"), io.BytesIO(body), ctype.encode()))
        return d

    def test_sweep_removes_unclaimed_uploads_after_the_grace(self) -> None:
        """An upload no message claimed is removed (row and bytes) once
        orphan_grace has passed on the clock; a claimed one and a blob
        another row shares stay."""
        png = files.image("PNG")
        a = self.successResultOf(self.upload("alice", png))
        b = self.successResultOf(self.upload("bob", png))  # the same bytes: one blob
        self.clock.advance(1.0)
        c = self.successResultOf(self.upload("alice", files.image("GIF")))
        self.successResultOf(Deferred.fromCoroutine(
            self.service.claim("c:bob", "conv1", "k1", (b["id"],))))
        self.clock.advance(3599.5)
        sweep = Deferred.fromCoroutine
        self.assertEqual(self.successResultOf(sweep(self.service.sweep())), 1)  # a only: c is 0.5 s younger
        self.assertIsNone(self.store.rows.get(a["id"]))
        self.assertIn(b["sha256"], self.blobs.blobs)  # still b's
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(sweep(self.service.sweep())), 1)
        self.assertNotIn(c["sha256"], self.blobs.blobs)
        self.assertEqual(set(self.store.rows), {b["id"]})

    def test_sweep_never_takes_the_bytes_of_an_upload_being_stored(self) -> None:
        """An orphan is swept while an upload of the same bytes is being
        stored: the sweep waits for it, then keeps the blob the new row uses."""
        png = files.image("PNG")
        old = self.successResultOf(self.upload("alice", png))
        self.clock.advance(7200.0)
        put_now, paused = self.blobs.put, Deferred()

        def slow_put(key: str, path: str) -> Any:
            return paused.addCallback(lambda _: put_now(key, path))

        self.blobs.put = slow_put  # type: ignore[method-assign]
        storing = self.upload("bob", png)
        sweeping = Deferred.fromCoroutine(self.service.sweep())
        self.assertNoResult(sweeping)  # waits for the upload's put and row
        self.blobs.put = put_now  # type: ignore[method-assign]
        paused.callback(None)
        new = self.successResultOf(storing)
        self.assertEqual(self.successResultOf(sweeping), 1)
        self.assertIsNone(self.store.rows.get(old["id"]))
        self.assertIn(new["id"], self.store.rows)
        self.assertIn(new["sha256"], self.blobs.blobs)

    def test_rate_and_daily_bytes(self) -> None:
        """Past the burst uploads are 429 rate_limited until the bucket
        refills on the clock; past daily_bytes 429 quota_exceeded."""
        png = files.image("PNG")
        self.successResultOf(self.upload("alice", png))
        self.successResultOf(self.upload("alice", png))
        e = self.failureResultOf(self.upload("alice", png), AttachmentError).value
        self.assertEqual((e.status, e.code), (429, "rate_limited"))
        self.clock.advance(1.0)
        big = b"x" * 4800
        self.successResultOf(self.upload("alice", big))
        self.clock.advance(5.0)
        e = self.failureResultOf(self.upload("alice", png), AttachmentError).value
        self.assertEqual((e.status, e.code), (429, "quota_exceeded"))
        self.clock.advance(86400.0)
        self.successResultOf(self.upload("alice", png))


# -- clamd -------------------------------------------------------------------------------
class FakeClamd:
    """A socket server speaking clamd's INSTREAM protocol on a Unix socket
    (one thread; it reads the chunked stream and answers FOUND when the
    stream contains a signature)."""

    def __init__(self, path: str, signatures: dict[bytes, str], answer: bytes | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(4)
        self.signatures = signatures
        self.answer = answer
        self.commands: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rb")
                command = b""
                while not command.endswith(b"\0"):
                    c = f.read(1)
                    if not c:
                        break
                    command += c
                self.commands.append(command)
                data = b""
                while True:
                    (n,) = struct.unpack(">I", f.read(4))
                    if n == 0:
                        break
                    data += f.read(n)
                found = [name for sig, name in self.signatures.items() if sig in data]
                answer = self.answer or (b"stream: " + found[0].encode() + b" FOUND\0" if found else b"stream: OK\0")
                conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


class ClamdClientTests(unittest.TestCase):
    """ClamdScanner over a real Unix socket to a server speaking clamd's protocol."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sc-clamd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "clamd.sock")

    def file(self, data: bytes) -> str:
        path = os.path.join(self.dir, "f")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_instream_clean_and_found(self) -> None:
        """The whole file goes in length-prefixed chunks (a small chunk size
        splits the signature across chunks); OK is clean, FOUND names the signature."""
        server = FakeClamd(self.path, {files.EICAR: "Eicar-Test-Signature"})
        self.addCleanup(server.close)
        scanner = ClamdScanner("unix:" + self.path, timeout=5, chunk=7)
        self.assertIsNone(scanner.scan(self.file(b"harmless " * 100)).infected)
        self.assertEqual(scanner.scan(self.file(b"junk" + files.EICAR + b"junk")).infected, "Eicar-Test-Signature")
        self.assertEqual(server.commands, [b"zINSTREAM\0", b"zINSTREAM\0"])

    def test_unavailable(self) -> None:
        """No socket, or an ERROR answer, is ScannerUnavailable."""
        with self.assertRaises(ScannerUnavailable):
            ClamdScanner("unix:" + self.path, timeout=2).scan(self.file(b"x"))
        server = FakeClamd(self.path, {}, answer=b"INSTREAM size limit exceeded. ERROR\0")
        self.addCleanup(server.close)
        with self.assertRaises(ScannerUnavailable):
            ClamdScanner("unix:" + self.path, timeout=2).scan(self.file(b"x"))
        self.assertRaises(ScannerUnavailable, parse_answer, b"")


CLAMD = shutil.which("clamd") or ("/usr/sbin/clamd" if os.path.exists("/usr/sbin/clamd") else None)


class RealClamdTests(unittest.TestCase):
    """A real clamd (Debian's clamav-daemon) with a signature database this
    test writes itself: an MD5 signature of the EICAR test file (there is
    no network to download the official database)."""

    timeout = 120

    def setUp(self) -> "Deferred[None]":
        if CLAMD is None:
            raise unittest.SkipTest("clamd is not installed (apt-get install clamav-daemon)")
        import hashlib

        self.dir = tempfile.mkdtemp(prefix="sc-realclamd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        db = os.path.join(self.dir, "db")
        os.makedirs(db)
        with open(os.path.join(db, "supportchat-test.hdb"), "w") as f:
            f.write(f"{hashlib.md5(files.EICAR).hexdigest()}:{len(files.EICAR)}:Supportchat.Test.EICAR\n")
        self.sock = os.path.join(self.dir, "clamd.sock")
        conf = os.path.join(self.dir, "clamd.conf")
        with open(conf, "w") as f:
            f.write(f"Foreground yes\nLocalSocket {self.sock}\nDatabaseDirectory {db}\n"
                    f"LogFile {self.dir}/clamd.log\nStreamMaxLength 20M\n"
                    + ("User root\n" if os.getuid() == 0 else ""))
        self.proc = subprocess.Popen([CLAMD, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self._stop)
        return self._socket_open()

    @inlineCallbacks
    def _socket_open(self) -> Any:
        """Waits, on the reactor (nothing blocks), for clamd to open its
        socket: loading the signatures takes a moment."""
        from twisted.internet import reactor, task

        deadline = time.monotonic() + 60
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None:
                raise unittest.SkipTest("clamd did not start: " + open(f"{self.dir}/clamd.log").read()[-300:])
            if time.monotonic() > deadline:
                self.fail("clamd did not open its socket within 60 s")
            yield task.deferLater(reactor, 0.1, lambda: None)

    def _stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def test_eicar_refused_by_real_clamd(self) -> None:
        """The EICAR test string is FOUND by clamd with our own signature;
        a clean file is OK; through process_upload EICAR is 422 infected."""
        scanner = ClamdScanner("unix:" + self.sock, timeout=30)
        path = os.path.join(self.dir, "eicar.txt")
        with open(path, "wb") as f:
            f.write(files.EICAR)
        self.assertEqual(scanner.scan(path).infected, "Supportchat.Test.EICAR.UNOFFICIAL")
        with open(path, "wb") as f:
            f.write(b"just a harmless note\n")
        self.assertIsNone(scanner.scan(path).infected)
        with self.assertRaises(AttachmentError) as e:
            run_upload(self, files.EICAR, "eicar.txt", scanner=scanner)
        self.assertEqual(e.exception.code, "infected")
