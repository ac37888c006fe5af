"""Attachments end to end on an in-process server over real sockets and
real SQLite (and Redis mode): upload over REST, a message frame carrying
the ids, deliveries, ``sync`` and REST history with signed links, and
downloads with their access rules and headers."""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any
from urllib.parse import urlsplit

from PIL import Image
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from supportchat.attachments.links import LinkSigner
from tests import attachment_files as files
from tests.support import SECRET, TIMEOUT, close_client, connect, http_client, is_event, start_server, token


def rss_bytes() -> int:
    """This process's resident set size now (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class _ChunkedUpload(protocol.Protocol):
    """Sends a multipart upload of ``total`` bytes with chunked encoding,
    64 KiB at a time as fast as the socket takes them (a push producer:
    paused while the kernel's buffers are full), until the server answers
    or closes. ``sent`` counts what the transport took."""

    def __init__(self, path: str, bearer: str, total: int) -> None:
        self.path, self.bearer, self.total = path, bearer, total
        self.sent = 0
        self.answer = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self._chunk = b"A" * 65536
        self._paused = False

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._pump()

    def stopProducing(self) -> None:
        self._paused = True

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        head = (f"POST {self.path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.bearer}\r\n"
                "Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        self.transport.write(head)
        self._send(b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n')
        self._pump()

    def _send(self, data: bytes) -> None:
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _pump(self) -> None:
        if self._paused or self.answer or self.done.called or self.sent >= self.total:
            return
        self._send(self._chunk)
        self.sent += len(self._chunk)
        reactor.callLater(0, self._pump)

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.answer)


class AttachmentsEndToEndTests(unittest.TestCase):
    timeout = 60

    def sections(self) -> dict[str, Any]:
        return {"attachments": {"max_bytes": 10 * 1024 * 1024}}

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, **self.sections())
        yield self.ready()
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.http = http_client()

    def ready(self) -> Any:
        return defer.succeed(None)

    # -- helpers -------------------------------------------------------------
    @inlineCallbacks
    def upload(self, user: str | None, data: bytes, filename: str = "f.png", declared: str = "image/png",
               role: str = "customer", extra: list[Any] | None = None) -> Any:
        body, ctype = files.multipart([("file", filename, data, declared)] + (extra or []))
        headers = {b"content-type": [ctype.encode()]}
        if user:
            headers[b"authorization"] = [f"Bearer {token(user, role)}".encode()]
        r = yield self.http.request("POST", self.base + "/api/v1/attachments", headers=headers, data=body)
        text = yield r.text()
        return r.code, json.loads(text) if text else None

    @inlineCallbacks
    def fetch(self, url: str, user: str | None = None, role: str = "customer",
              headers: dict[bytes, list[bytes]] | None = None) -> Any:
        h = dict(headers or {})
        if user:
            h[b"authorization"] = [f"Bearer {token(user, role)}".encode()]
        target = url if url.startswith("http") else self.base + url
        r = yield self.http.request("GET", target, headers=h)
        content = yield r.content()
        return r, content

    @inlineCallbacks
    def pair(self, customer: str = "cust") -> Any:
        cust = yield connect(self.server.port, token(customer))
        agent = yield connect(self.server.port, token("ann", "agent", name="Ann"))
        self.addCleanup(close_client, cust)
        self.addCleanup(close_client, agent)
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        agent.send({"type": "accept", "ref": "a", "conversation": conv})
        yield agent.next_frame("conversation", lambda f: f.get("ref") == "a")
        yield cust.next_event("joined")
        if not any(is_event(f, "joined") for f in agent.frames):
            yield agent.next_event("joined")
        return cust, agent, conv

    @inlineCallbacks
    def rest_message(self, conv: str, msg_id: str) -> Any:
        """The message as REST history shows it (in Redis mode, once the
        persister has flushed it to SQL: a bounded wait)."""
        for _ in range(100):
            r, body = yield self.fetch(f"/api/v1/conversations/{conv}/messages", "ann", "agent")
            found = [m for m in json.loads(body)["messages"] if m["msg_id"] == msg_id]
            if found:
                return found[0]
            yield _tick()
        raise AssertionError("the message never reached REST history")

    def header(self, r: Any, name: str) -> str:
        values = r.headers.getRawHeaders(name.encode()) or [b""]
        return values[0].decode() if isinstance(values[0], bytes) else values[0]

    # -- the round trip --------------------------------------------------------
    @inlineCallbacks
    def test_screenshot_round_trip(self) -> Any:
        """A customer uploads a PNG with GPS EXIF (201: its stored size and
        sha256, width, height, links for the preview), sends it with an
        empty body; the ack is a normal ack; the agent's delivery, sync and
        REST history show it with fresh signed links; both open it and its
        thumbnail; the bytes have no EXIF."""
        cust, agent, conv = yield self.pair()
        code, up = yield self.upload("cust", files.png_with_gps((80, 60)), "screen shot.png")
        self.assertEqual(code, 201, up)
        self.assertEqual((up["name"], up["content_type"], up["width"], up["height"]),
                         ("screen shot.png", "image/png", 80, 60))
        self.assertTrue(up["url"] and up["thumbnail_url"])
        r, preview = yield self.fetch(up["url"])  # the uploader's preview, no bearer
        self.assertEqual(r.code, 200)
        self.assertEqual((len(preview), hashlib.sha256(preview).hexdigest()), (up["size"], up["sha256"]))
        self.assertEqual(dict(Image.open(io.BytesIO(preview)).getexif()), {})

        cust.send({"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "k1",
                   "attachments": [up["id"]]})
        ack = yield cust.next_frame("ack")
        self.assertEqual((ack["ref"], ack["duplicate"]), ("m", False))
        got = yield agent.next_frame("message", lambda f: f.get("msg_id") == ack["msg_id"])
        self.assertEqual((got["body"], got["seq"]), ("", ack["seq"]))
        [att] = got["attachments"]
        self.assertEqual({k: att[k] for k in ("id", "name", "content_type", "size", "width", "height")},
                         {k: up[k] for k in ("id", "name", "content_type", "size", "width", "height")})
        self.assertNotIn("thumbnail", att)
        r, data = yield self.fetch(att["url"])
        self.assertEqual((r.code, hashlib.sha256(data).hexdigest()), (200, up["sha256"]))
        self.assertEqual(self.header(r, "x-content-type-options"), "nosniff")
        self.assertIn("sandbox", self.header(r, "content-security-policy"))
        self.assertTrue(self.header(r, "content-disposition").startswith("inline;"))
        self.assertEqual(self.header(r, "etag"), f'"{up["sha256"]}"')
        r, thumb = yield self.fetch(att["thumbnail_url"])
        self.assertEqual((r.code, self.header(r, "content-type")), (200, "image/jpeg"))
        self.assertLessEqual(max(Image.open(io.BytesIO(thumb)).size), 320)

        agent.send({"type": "sync", "ref": "y", "conversation": conv, "after_seq": 0})
        history = yield agent.next_frame("history")
        [synced] = [m for m in history["messages"] if m["msg_id"] == ack["msg_id"]]
        self.assertTrue(synced["attachments"][0]["url"].startswith("/api/v1/attachments/" + up["id"] + "?exp="))
        rest = yield self.rest_message(conv, ack["msg_id"])
        r, data = yield self.fetch(rest["attachments"][0]["url"])
        self.assertEqual(r.code, 200)

    @inlineCallbacks
    def test_claim_rules(self) -> Any:
        """Unknown, another user's and already sent ids get the same
        not_found and store nothing; a retry of the same client_msg_id is a
        duplicate ack; more than ten ids is refused; a text body may go along."""
        cust, agent, conv = yield self.pair()
        _, mine = yield self.upload("cust", files.image("PNG"))
        _, theirs = yield self.upload("mallory", files.image("PNG"))
        errors = []
        for i, ids in enumerate((["a000000000000deadbeef"], [theirs["id"]], [mine["id"], theirs["id"]])):
            cust.send({"type": "message", "ref": f"e{i}", "conversation": conv, "client_msg_id": f"e{i}",
                       "attachments": ids})
            errors.append((yield cust.next_frame("error", lambda f, i=i: f.get("ref") == f"e{i}")))
        self.assertEqual({(e["code"], e["message"]) for e in errors}, {("not_found", "no such attachment")})
        cust.send({"type": "message", "ref": "ok", "conversation": conv, "client_msg_id": "k1", "body": "my mug",
                   "attachments": [mine["id"]]})
        ack = yield cust.next_frame("ack", lambda f: f.get("ref") == "ok")
        got = yield agent.next_frame("message", lambda f: f.get("msg_id") == ack["msg_id"])
        self.assertEqual((got["body"], len(got["attachments"])), ("my mug", 1))
        cust.send({"type": "message", "ref": "again", "conversation": conv, "client_msg_id": "k1",
                   "body": "my mug", "attachments": [mine["id"]]})
        dup = yield cust.next_frame("ack", lambda f: f.get("ref") == "again")
        self.assertEqual((dup["duplicate"], dup["msg_id"], dup["seq"]), (True, ack["msg_id"], ack["seq"]))
        cust.send({"type": "message", "ref": "reuse", "conversation": conv, "client_msg_id": "k2",
                   "attachments": [mine["id"]]})
        err = yield cust.next_frame("error", lambda f: f.get("ref") == "reuse")
        self.assertEqual(err["code"], "not_found")
        cust.send({"type": "message", "ref": "many", "conversation": conv, "client_msg_id": "k3",
                   "attachments": [f"a{i}" for i in range(11)]})
        err = yield cust.next_frame("error", lambda f: f.get("ref") == "many")
        self.assertEqual(err["code"], "too_large")
        cust.send({"type": "message", "ref": "empty", "conversation": conv, "client_msg_id": "k4", "body": " "})
        err = yield cust.next_frame("error", lambda f: f.get("ref") == "empty")
        self.assertEqual(err["code"], "bad_request")

    @inlineCallbacks
    def test_download_rules(self) -> Any:
        """No credentials 401; another customer 404 (by id, by bearer);
        staff and participants 200; expired or tampered links 403; an
        upload not yet sent is its uploader's only; PDFs download as
        attachments; Range, ETag and If-None-Match work."""
        cust, agent, conv = yield self.pair()
        _, pdf = yield self.upload("cust", files.PDF, "invoice.pdf", "application/pdf")
        self.assertIsNone(pdf["thumbnail_url"])
        path = f"/api/v1/attachments/{pdf['id']}"
        r, _ = yield self.fetch(path)
        self.assertEqual(r.code, 401)
        r, _ = yield self.fetch(path, "other")
        self.assertEqual(r.code, 404)
        r, _ = yield self.fetch(path, "ann", "agent")
        self.assertEqual(r.code, 404)  # not sent yet: the uploader's only
        r, body = yield self.fetch(path, "cust")
        self.assertEqual((r.code, body), (200, files.PDF))
        cust.send({"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "k1",
                   "attachments": [pdf["id"]]})
        yield cust.next_frame("ack")
        r, body = yield self.fetch(path, "ann", "agent")
        self.assertEqual((r.code, body), (200, files.PDF))
        self.assertTrue(self.header(r, "content-disposition").startswith("attachment;"))
        self.assertIn("invoice.pdf", self.header(r, "content-disposition"))
        r, _ = yield self.fetch(path, "other")
        self.assertEqual(r.code, 404)
        r, _ = yield self.fetch(path + "x", "cust")
        self.assertEqual(r.code, 404)
        # Links: tampered, expired (a signature of the server's own key whose time is up).
        r, _ = yield self.fetch(pdf["url"].replace("sig=", "sig=A"))
        self.assertEqual(r.code, 403)
        expired = LinkSigner(SECRET, -120, reactor.seconds).url(pdf["id"])
        r, body = yield self.fetch(expired)
        self.assertEqual((r.code, json.loads(body)["error"]["code"]), (403, "expired"))
        other_id = pdf["id"][:-1] + ("1" if pdf["id"].endswith("0") else "0")
        r, _ = yield self.fetch(pdf["url"].replace(pdf["id"], other_id))
        self.assertEqual(r.code, 403)
        # Ranges and validators.
        r, part = yield self.fetch(path, "cust", headers={b"range": [b"bytes=0-3"]})
        self.assertEqual((r.code, part, self.header(r, "content-range")), (206, b"%PDF", f"bytes 0-3/{len(files.PDF)}"))
        r, part = yield self.fetch(path, "cust", headers={b"range": [b"bytes=-6"]})
        self.assertEqual((r.code, part), (206, files.PDF[-6:]))
        r, _ = yield self.fetch(path, "cust", headers={b"range": [b"bytes=99999-"]})
        self.assertEqual(r.code, 416)
        r, body = yield self.fetch(path, "cust", headers={b"if-none-match": [f'"{pdf["sha256"]}"'.encode()]})
        self.assertEqual((r.code, body), (304, b""))

    @inlineCallbacks
    def test_export_erase_and_sweep(self) -> Any:
        """The export lists a customer's uploads with signed links to their
        bytes; erasing the customer makes their attachments unreadable
        (links and bearer: 404) and removes rows and bytes before it answers."""
        cust, agent, conv = yield self.pair()
        _, up = yield self.upload("cust", files.image("PNG"))
        cust.send({"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "k1",
                   "attachments": [up["id"]]})
        ack = yield cust.next_frame("ack")
        yield self.rest_message(conv, ack["msg_id"])  # stored in SQL (Redis mode: flushed)
        r, body = yield self.fetch("/api/v1/admin/customers/cust/export", "boss", "admin")
        [exported] = json.loads(body)["attachments"]
        self.assertEqual(exported["id"], up["id"])
        r, data = yield self.fetch(exported["url"])  # the bytes, through the export's signed link
        self.assertEqual(hashlib.sha256(data).hexdigest(), up["sha256"])
        service = self.server.server.get_attachments()
        self.assertTrue((yield service.blobs.exists(up["sha256"])))
        r = yield self.http.request("DELETE", self.base + "/api/v1/admin/customers/cust",
                                    headers={b"authorization": [f"Bearer {token('boss', 'admin')}".encode()]})
        yield r.content()
        self.assertEqual(r.code, 200)
        r, _ = yield self.fetch(up["url"])
        self.assertEqual(r.code, 404)
        r, _ = yield self.fetch(f"/api/v1/attachments/{up['id']}", "ann", "agent")
        self.assertEqual(r.code, 404)
        # The erase ran the sweep: row and bytes are already gone.
        self.assertIsNone((yield service.store.get(up["id"])))
        self.assertFalse((yield service.blobs.exists(up["sha256"])))
        self.assertFalse((yield service.blobs.exists(up["sha256"] + ".thumb")))

    @inlineCallbacks
    def test_upload_refusals(self) -> Any:
        """401 without a token; an executable declared image/png 415; a
        20,000 x 20,000 PNG 422; a body that is not multipart 400; each a
        JSON error; metrics count outcomes."""
        code, body = yield self.upload(None, files.image("PNG"))
        self.assertEqual(code, 401)
        code, body = yield self.upload("cust", files.ELF, "cat.png", "image/png")
        self.assertEqual((code, body["error"]["code"]), (415, "unsupported_type"))
        code, body = yield self.upload("cust", files.png_header_only(20000, 20000), "bomb.png")
        self.assertEqual((code, body["error"]["code"]), (422, "too_many_pixels"))
        r = yield self.http.request("POST", self.base + "/api/v1/attachments", data=b"{}", headers={
            b"authorization": [f"Bearer {token('cust')}".encode()], b"content-type": [b"application/json"]})
        self.assertEqual(r.code, 400)
        yield r.content()
        code, body = yield self.upload("cust", files.image("PNG"), extra=[("conversation", None, b"nope", "")])
        self.assertEqual((code, body["error"]["code"]), (404, "not_found"))
        r = yield self.http.get(self.base + "/metrics")
        text = (yield r.text())
        self.assertIn('attachment_uploads_total{outcome="unsupported_type"} 1.0', text)
        self.assertIn('attachment_uploads_total{outcome="too_many_pixels"} 1.0', text)

    @inlineCallbacks
    def test_50_mib_refused_early_with_memory_bounded(self) -> Any:
        """A 50 MiB upload is refused with 413 JSON: from its Content-Length
        before any byte of the body, and, sent chunked, as soon as the
        limit is passed (far less than 50 MiB sent), with this process's
        RSS growing by well under the upload's size."""
        headers = (f"POST /api/v1/attachments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token('cust')}\r\n"
                   "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 52428800\r\n\r\n").encode()
        class Raw(protocol.Protocol):
            def __init__(self) -> None:
                self.data = b""
                self.done: defer.Deferred[bytes] = defer.Deferred()

            def connectionMade(self) -> None:
                self.transport.write(headers)

            def dataReceived(self, data: bytes) -> None:
                self.data += data

            def connectionLost(self, reason: Any = None) -> None:
                self.done.callback(self.data)

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port)
        raw = yield endpoint.connect(protocol.Factory.forProtocol(Raw))
        answer = yield raw.done.addTimeout(TIMEOUT, reactor)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:80])
        self.assertIn(b'"too_large"', answer)

        before = rss_bytes()
        total = 50 * 1024 * 1024
        sender = yield endpoint.connect(protocol.Factory.forProtocol(
            lambda: _ChunkedUpload("/api/v1/attachments", token("cust"), total)))
        answer = yield sender.done.addTimeout(TIMEOUT, reactor)
        grown = rss_bytes() - before
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:80])
        self.assertLess(sender.sent, 12 * 1024 * 1024)
        self.assertLess(grown, 24 * 1024 * 1024, f"RSS grew by {grown} bytes")
        yield task.deferLater(reactor, 0, lambda: None)  # the server side's abort completes


class RedisModeAttachmentsTests(AttachmentsEndToEndTests):
    """The same, with Redis (streams, pub/sub, persister) in between."""

    def sections(self) -> dict[str, Any]:
        from tests import redis_support

        if redis_support.REDIS_SKIP:
            raise unittest.SkipTest(redis_support.REDIS_SKIP)
        url = redis_support.shared().url
        return dict(super().sections(), redis={"url": url, "prefix": f"att{os.getpid()}{id(self)}:"})

    def ready(self) -> Any:
        return self.server.server.get_redis().connected_once

    @inlineCallbacks
    def test_persisted_message_keeps_its_attachments(self) -> Any:
        """A message with an attachment flushed by the persister to SQL
        still carries it in REST history (read from SQL)."""
        cust, agent, conv = yield self.pair()
        _, up = yield self.upload("cust", files.image("PNG"))
        cust.send({"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "k1",
                   "attachments": [up["id"]]})
        ack = yield cust.next_frame("ack")
        store = self.server.server.get_history_store()
        for _ in range(200):
            page = yield store.messages_page(conv, 0, None, 50)
            if any(m.msg_id == ack["msg_id"] for m in page):
                break
            yield _tick()  # bounded wait for another service's progress, as test_cluster.flushed
        [stored] = [m for m in page if m.msg_id == ack["msg_id"]]
        self.assertEqual(stored.data["attachments"][0]["id"], up["id"])


def _tick() -> "defer.Deferred[None]":
    from twisted.internet import task

    return task.deferLater(reactor, 0.05, lambda: None)


class KillDuringUploadTests(unittest.TestCase):
    """SIGKILL of a real server process while uploads are arriving and being
    processed: afterwards every attachment row points at a whole blob
    (its bytes hash to its key and sha256), no file in the blob tree outside
    ``tmp/`` is partial, and the restarted server serves and accepts uploads."""

    timeout = 120

    @inlineCallbacks
    def test_kill_9_leaves_no_reference_to_a_partial_file(self) -> Any:
        import sqlite3

        from tests.support import ServerProcess, free_port

        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        port = free_port()
        server = ServerProcess(data_dir, port)
        yield server.start()
        self.addCleanup(server.kill)
        base = f"http://127.0.0.1:{port}"
        http = http_client()
        # Some whole uploads first, then several large ones in flight when the process is killed.
        stored = []
        for i in range(3):
            body, ctype = files.multipart([("file", f"p{i}.png", files.image("PNG", (50 + i, 40)), "image/png")])
            r = yield http.request("POST", base + "/api/v1/attachments", data=body, headers={
                b"authorization": [f"Bearer {token('cust')}".encode()], b"content-type": [ctype.encode()]})
            stored.append(json.loads((yield r.text())))
            self.assertEqual(r.code, 201)
        big = [files.multipart([("file", f"big{i}.txt", (b"line %d\n" % i) * 900_000, "text/plain")]) for i in range(3)]
        in_flight = [http.request("POST", base + "/api/v1/attachments", data=body, headers={
            b"authorization": [f"Bearer {token('cust')}".encode()], b"content-type": [ctype.encode()]})
            for body, ctype in big]
        for d in in_flight:
            d.addErrback(lambda _: None)  # the server dies under them
        # Kill while the server is spooling one of them (its worker thread is
        # writing to attachments/tmp/): a bounded wait for that condition.
        spool = os.path.join(data_dir, "attachments", "tmp")
        for _ in range(500):
            if any(n.startswith("upload-") for n in os.listdir(spool)):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        server.signal("KILL")
        yield server.ended()
        for d in in_flight:
            yield d

        root = os.path.join(data_dir, "attachments")
        self.assertTrue(os.listdir(spool), "the kill did not happen mid-upload")
        db = sqlite3.connect(os.path.join(data_dir, "supportchat.db"))
        rows = db.execute("SELECT id, size, sha256, blob_key, thumb_key FROM attachments").fetchall()
        db.close()
        self.assertGreaterEqual(len(rows), 3)
        for aid, size, sha, blob_key, thumb_key in rows:
            path = os.path.join(root, blob_key[:2], blob_key)
            data = open(path, "rb").read()
            self.assertEqual((len(data), hashlib.sha256(data).hexdigest(), blob_key), (size, sha, sha), aid)
            if thumb_key:
                self.assertTrue(os.path.exists(os.path.join(root, thumb_key[:2], thumb_key)))
        for folder in os.listdir(root):
            if folder == "tmp":
                continue
            for name in os.listdir(os.path.join(root, folder)):
                data = open(os.path.join(root, folder, name), "rb").read()
                if not name.endswith(".thumb"):
                    self.assertEqual(hashlib.sha256(data).hexdigest(), name, "a partial blob")

        restarted = ServerProcess(data_dir, port)
        yield restarted.start()
        self.addCleanup(restarted.kill)
        r = yield http.request("GET", base + stored[0]["url"])
        self.assertEqual((r.code, hashlib.sha256((yield r.content())).hexdigest()), (200, stored[0]["sha256"]))
        body, ctype = files.multipart([("file", "after.txt", b"after the crash\n", "text/plain")])
        r = yield http.request("POST", base + "/api/v1/attachments", data=body, headers={
            b"authorization": [f"Bearer {token('cust')}".encode()], b"content-type": [ctype.encode()]})
        self.assertEqual(r.code, 201, (yield r.text()))
        restarted.signal("TERM")
        yield restarted.ended()


class S3AttachmentsTests(AttachmentsEndToEndTests):
    """The same with ``storage = "s3"``: the bytes in moto's S3 server."""

    def sections(self) -> dict[str, Any]:
        from tests.test_attachments import moto_endpoint

        return dict(super().sections(), attachments=dict(
            super().sections()["attachments"], storage="s3", s3_endpoint=moto_endpoint(),
            s3_bucket=f"sc-e2e-{os.getpid()}-{id(self)}", s3_access_key="testing", s3_secret_key="testing-secret"))

    def ready(self) -> Any:
        return defer.Deferred.fromCoroutine(self.server.server.get_attachments().blobs.create_bucket())


class ScannedUploadsTests(unittest.TestCase):
    """A server configured with ``[attachments] scanner`` (a Unix socket
    speaking clamd's protocol): infected uploads refused with a clear error
    and counted; clean ones stored; the scanner gone means 503 (refuse) or
    stored and flagged (accept)."""

    timeout = 60

    @inlineCallbacks
    def start(self, scanner_down: str) -> Any:
        import shutil
        import tempfile

        from tests.test_attachments import FakeClamd

        folder = tempfile.mkdtemp(prefix="sc-scan-")
        self.addCleanup(shutil.rmtree, folder, True)
        self.sock = os.path.join(folder, "clamd.sock")
        self.clamd = FakeClamd(self.sock, {files.EICAR: "Eicar-Test-Signature"})
        self.addCleanup(self.clamd.close)
        self.server = yield start_server(self, attachments={"scanner": "unix:" + self.sock,
                                                             "scanner_down": scanner_down, "scan_timeout": 5.0})
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.http = http_client()

    @inlineCallbacks
    def upload(self, data: bytes, name: str = "note.txt") -> Any:
        body, ctype = files.multipart([("file", name, data, "text/plain")])
        r = yield self.http.request("POST", self.base + "/api/v1/attachments", data=body, headers={
            b"authorization": [f"Bearer {token('cust')}".encode()], b"content-type": [ctype.encode()]})
        return r.code, json.loads((yield r.text()))

    @inlineCallbacks
    def metrics(self) -> Any:
        r = yield self.http.get(self.base + "/metrics")
        return (yield r.text())

    @inlineCallbacks
    def test_infected_refused_clean_stored_scanner_down_refused(self) -> Any:
        """EICAR: 422 infected; a clean note: 201 and its row says clean;
        clamd gone: 503 scanner_unavailable with Retry-After; the metrics
        count each result."""
        yield self.start("refuse")
        code, body = yield self.upload(files.EICAR, "eicar.txt")
        self.assertEqual((code, body["error"]["code"]), (422, "infected"))
        code, body = yield self.upload(b"a harmless note\n")
        self.assertEqual(code, 201)
        row = yield self.server.server.get_attachments().store.get(body["id"])
        self.assertEqual(row.scan, "clean")
        self.clamd.close()
        os.unlink(self.sock)
        code, body = yield self.upload(b"another note\n")
        self.assertEqual((code, body["error"]["code"]), (503, "scanner_unavailable"))
        text = yield self.metrics()
        for result in ("infected", "clean", "unavailable"):
            self.assertIn(f'attachment_scans_total{{result="{result}"}} 1.0', text)
        self.assertIn('attachment_uploads_total{outcome="infected"} 1.0', text)

    @inlineCallbacks
    def test_scanner_down_accepted_and_flagged(self) -> Any:
        """With scanner_down = accept, an upload while clamd is gone is
        stored, its row flagged unavailable."""
        yield self.start("accept")
        self.clamd.close()
        os.unlink(self.sock)
        code, body = yield self.upload(b"a note while clamd is down\n")
        self.assertEqual(code, 201)
        row = yield self.server.server.get_attachments().store.get(body["id"])
        self.assertEqual(row.scan, "unavailable")
