"""Hostile input is the client's mistake, never the server's, and never
another user's problem (issue 12, findings 1 and 2).

- Parsing refuses what cannot be stored or sent back: text that is not
  valid Unicode (a lone surrogate from a JSON escape), NUL characters,
  integers beyond the SQL BIGINT, NaN; an unusable ``ref`` is dropped, not
  fatal.
- A group-commit batch that fails for one request's sake is retried one by
  one: only the culprit fails (``bad_request``); a database outage still
  fails everyone with ``unavailable``, without the one-by-one retries.
- Every frame type and every REST route, given malformed input, answers an
  ``error`` frame with a client code or a 4xx with a JSON body.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from supportchat.handlers.connections import encode
from supportchat.http.history import AsyncJsonResource
from supportchat.http.resources import JsonResource
from supportchat.storage.engines import DatabaseClosed, SqliteEngine
from supportchat.storage.models import TEXT, AppendRequest
from supportchat.storage.sql import SqlConversationStore, Unstorable
from supportchat.wire.frames import MAX_INT, FrameError, Ping, parse_frame
from tests.hostile import ErrorLog, FakeReactor, HeldDatabase, Node
from tests.support import http_client, start_server, token

SURROGATE = "\ud800"
# Every client frame type with valid fields; each test spoils one field.
VALID_FRAMES: dict[str, dict[str, Any]] = {
    "ping": {"type": "ping"},
    "start": {"type": "start", "team": ""},
    "accept": {"type": "accept", "conversation": "c1"},
    "take": {"type": "take", "conversation": "c1"},
    "message": {"type": "message", "conversation": "c1", "client_msg_id": "k1", "body": "hello"},
    "sync": {"type": "sync", "conversation": "c1", "after_seq": 0, "limit": 10},
    "typing": {"type": "typing", "conversation": "c1"},
    "read": {"type": "read", "conversation": "c1", "seq": 1},
    "status": {"type": "status", "status": "online"},
    "transfer": {"type": "transfer", "conversation": "c1", "to_team": "sales", "note": "n"},
    "close": {"type": "close", "conversation": "c1"},
    "rate": {"type": "rate", "conversation": "c1", "rating": 5, "comment": "ok"},
}
TEXT_FIELDS = [("start", "team"), ("accept", "conversation"), ("take", "conversation"),
               ("message", "conversation"), ("message", "client_msg_id"), ("message", "body"),
               ("sync", "conversation"), ("typing", "conversation"), ("read", "conversation"),
               ("transfer", "conversation"), ("transfer", "to_team"), ("transfer", "note"),
               ("close", "conversation"), ("rate", "conversation"), ("rate", "comment")]
INT_FIELDS = [("sync", "after_seq"), ("sync", "limit"), ("read", "seq"), ("rate", "rating")]
HUGE = [2**63, 10**20, -(2**63) - 1, 2**64 + 5]
CLIENT_CODES = {"bad_request", "too_large", "not_found", "forbidden", "conflict", "rate_limited"}


def parse(frame: Any) -> Any:
    return parse_frame(frame if isinstance(frame, str) else json.dumps(frame), 4000, 500)


def refusal(frame: Any) -> FrameError:
    try:
        parse(frame)
    except FrameError as e:
        return e
    raise AssertionError(f"{frame!r} was accepted")


class ParseRefusalTests(unittest.SynchronousTestCase):
    """What parsing refuses, and how."""

    def test_lone_surrogate_in_any_text_field_is_bad_request_naming_it(self) -> None:
        """A lone surrogate (legal as a JSON escape, not storable) in any text
        field is refused with bad_request naming the field; the ref is kept."""
        for kind, field in TEXT_FIELDS:
            for value in (SURROGATE, "ok" + SURROGATE + "ok", "\udfff"):
                e = refusal(dict(VALID_FRAMES[kind], **{field: value, "ref": 9}))
                self.assertEqual((e.code, e.ref), ("bad_request", 9), (kind, field))
                self.assertIn(f"'{field}'", e.message)

    def test_nul_in_any_text_field_is_bad_request(self) -> None:
        """A NUL character in any text field is refused with bad_request naming the field."""
        for kind, field in TEXT_FIELDS:
            e = refusal(dict(VALID_FRAMES[kind], **{field: "a\x00b"}))
            self.assertEqual(e.code, "bad_request", (kind, field))
            self.assertIn(f"'{field}'", e.message)

    def test_integers_beyond_bigint_are_bad_request(self) -> None:
        """seq, after_seq, limit and rating beyond the SQL BIGINT (2^63, 10^20...) are bad_request."""
        for kind, field in INT_FIELDS:
            for value in HUGE:
                e = refusal(dict(VALID_FRAMES[kind], **{field: value}))
                self.assertEqual(e.code, "bad_request", (kind, field, value))
                self.assertIn(f"'{field}'", e.message)
        self.assertEqual(parse(dict(VALID_FRAMES["sync"], after_seq=MAX_INT)).after_seq, MAX_INT)

    def test_unusable_ref_is_dropped_not_fatal(self) -> None:
        """A ref that cannot be echoed (lone surrogate, beyond 64 bits, a float,
        an object) is dropped: the frame still parses, answered without ref."""
        for ref in (SURROGATE, 2**64, 1.5, {"a": 1}, [1], "x" * 200):
            self.assertEqual(parse({"type": "ping", "ref": ref}), Ping(ref=None))
        self.assertEqual(refusal({"type": "sync", "ref": SURROGATE}).ref, None)

    def test_nan_and_infinity_are_not_json(self) -> None:
        """NaN and Infinity (which Python's parser accepts) are refused as not JSON."""
        for text in ('{"type":"ping","ref":NaN}', '{"type":"read","conversation":"c","seq":Infinity}'):
            self.assertEqual(refusal(text).code, "bad_request")

    def test_deep_nesting_is_bad_request(self) -> None:
        """A frame nested deeper than the parser goes is bad_request, not a crash."""
        self.assertEqual(refusal("[" * 100_000 + "]" * 100_000).code, "bad_request")


class EncodeTests(unittest.SynchronousTestCase):
    def test_every_reply_is_encodable(self) -> None:
        """Even a frame holding text that is not valid Unicode encodes to UTF-8
        (as a JSON escape), so a reply can never fail at the socket."""
        frame = {"type": "error", "code": "bad_request", "message": "x", "ref": SURROGATE, "body": "é" + SURROGATE}
        payload = encode(frame)
        payload.encode("utf-8")
        self.assertEqual(json.loads(payload), frame)
        self.assertEqual(encode({"a": "é"}), '{"a":"é"}')


def append(conv: str, sender: str, body: str, key: str) -> AppendRequest:
    return AppendRequest(conversation_id=conv, sender_id=sender, sender_role="customer", kind=TEXT, body=body,
                         ts=1000.0, client_msg_id=key)


class GroupCommitIsolationTests(unittest.SynchronousTestCase):
    """SqlConversationStore's group commit on real SQLite."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.db = HeldDatabase(SqliteEngine(self.mktemp() + ".sqlite3"), self.reactor)
        self.db.start()
        self.addCleanup(self.db.close)
        self.successResultOf(self.db.migrate())
        self.store = SqlConversationStore(self.db)
        self.alice, _ = self.successResultOf(self.store.open_conversation("alice", 1.0))
        self.bob, _ = self.successResultOf(self.store.open_conversation("bob", 1.0))
        self.errors = ErrorLog().install(self)

    def test_poisoned_request_fails_alone(self) -> None:
        """A batch broken by one request that cannot be stored (a lone
        surrogate) is retried one by one: every other waiter gets its
        normal result, only after its own commit; the culprit gets
        bad_request; nothing is logged as an error."""
        self.db.hold = True
        first = self.store.append(append(self.bob.id, "bob", "one", "b1"))
        batch = [
            self.store.append(append(self.alice.id, "alice", "bad " + SURROGATE, "a1")),
            self.store.append(append(self.bob.id, "bob", "two", "b2")),
            self.store.append(append(self.alice.id, "alice", "fine", "a2")),
        ]
        self.assertNoResult(first)
        self.assertNoResult(batch[1])
        self.db.release()
        self.assertEqual(self.successResultOf(first).message.seq, 1)
        failure = self.failureResultOf(batch[0], Unstorable)
        self.assertEqual(failure.value.code, "bad_request")
        self.assertEqual(self.successResultOf(batch[1]).message.seq, 2)
        self.assertEqual(self.successResultOf(batch[2]).message.seq, 1)
        self.assertEqual(self.db.descs.count("append_one"), 3)
        self.assertEqual((self.store.isolations, self.store.unstorable), (1, 1))
        stored = self.successResultOf(self.store.get_messages(self.bob.id, 0, 10))
        self.assertEqual([m.body for m in stored], ["one", "two"])
        self.assertEqual(self.errors.events, [])

    def test_outage_fails_everyone_without_one_by_one_retries(self) -> None:
        """When the database itself fails (here: closed under the batch),
        every waiter gets the failure (unavailable for clients; retry safe)
        and the batch is not retried request by request."""
        self.db.hold = True
        first = self.store.append(append(self.bob.id, "bob", "one", "b1"))
        batch = [self.store.append(append(self.alice.id, "alice", "x", "a1")),
                 self.store.append(append(self.bob.id, "bob", "two", "b2"))]
        self.db.close()
        self.db.release()
        for d in [first, *batch]:
            self.failureResultOf(d, DatabaseClosed)
        self.assertNotIn("append_one", self.db.descs)
        self.assertEqual(self.store.isolations, 0)
        self.flushLoggedErrors(DatabaseClosed)


class ServerEngineIsolationTests(unittest.SynchronousTestCase):
    """The same isolation on PostgreSQL and MariaDB, with the values each
    refuses: a lone surrogate (no driver encodes it); on PostgreSQL also a
    NUL and a client_msg_id longer than its VARCHAR(128) column."""

    engine = "postgresql"

    def setUp(self) -> None:
        from supportchat.storage.engines import engine_from_url
        from tests import dbs

        reason = dbs.unreachable(self.engine)
        if reason:
            raise unittest.SkipTest(reason)
        engine = engine_from_url(dbs.shared_database(self.engine))
        dbs.clean(engine)
        self.db = HeldDatabase(engine, FakeReactor())
        self.db.start()
        self.addCleanup(self.db.close)
        self.store = SqlConversationStore(self.db)
        self.conv, _ = self.successResultOf(self.store.open_conversation("alice", 1.0))
        self.errors = ErrorLog().install(self)

    def poison(self) -> list[AppendRequest]:
        out = [append(self.conv.id, "alice", "bad " + SURROGATE, "p1")]
        if self.engine == "postgresql":  # (MariaDB without strict mode truncates, and keeps NUL)
            out.append(append(self.conv.id, "alice", "fine", "x" * 200))
            out.append(append(self.conv.id, "alice", "nul \x00 byte", "p3"))
        return out

    def test_each_culprit_fails_alone(self) -> None:
        """Good appends around every poisoned one are stored in order and
        acknowledged; each culprit gets bad_request; nothing logged as an error."""
        self.db.hold = True
        first = self.store.append(append(self.conv.id, "alice", "one", "g0"))
        mixed = []
        for i, bad in enumerate(self.poison()):
            mixed.append((False, self.store.append(bad)))
            mixed.append((True, self.store.append(append(self.conv.id, "alice", f"good {i}", f"g{i + 1}"))))
        self.db.release()
        self.assertEqual(self.successResultOf(first).message.seq, 1)
        seqs = []
        for ok, d in mixed:
            if ok:
                seqs.append(self.successResultOf(d).message.seq)
            else:
                self.assertEqual(self.failureResultOf(d, Unstorable).value.code, "bad_request")
        self.assertEqual(seqs, list(range(2, 2 + len(seqs))))
        stored = self.successResultOf(self.store.get_messages(self.conv.id, 0, 50))
        self.assertEqual([m.body for m in stored], ["one"] + [f"good {i}" for i in range(len(seqs))])
        self.assertEqual(self.errors.events, [])


class MariaDbIsolationTests(ServerEngineIsolationTests):
    engine = "mysql"


class FrameIsolationTests(unittest.SynchronousTestCase):
    """Findings 1 and 2 through the real handlers on real SQLite."""

    def setUp(self) -> None:
        self.node = Node(self)
        self.errors = ErrorLog().install(self)

    def conversation(self, session: Any, transport: Any) -> str:
        self.successResultOf(self.node.receive(session, json.dumps({"type": "start", "ref": "s"})))
        return str(transport.of_type("conversation")[-1]["conversation"]["id"])

    def test_poisoned_message_does_not_fail_another_users_batch(self) -> None:
        """A message whose body is a lone surrogate, sent while another user's
        messages share its group commit, is refused (bad_request naming the
        body); the other user's messages are all acked; nobody gets unavailable."""
        a, at = self.node.open("mallory")
        b, bt = self.node.open("bob")
        conv_a, conv_b = self.conversation(a, at), self.conversation(b, bt)
        self.node.db.hold = True
        pending = [self.node.receive(b, json.dumps({"type": "message", "ref": "b1", "conversation": conv_b,
                                                    "client_msg_id": "b1", "body": "one"}))]
        pending.append(self.node.receive(a, '{"type":"message","ref":"a1","conversation":"%s","client_msg_id":"a1",'
                                            '"body":"x\\ud800"}' % conv_a))
        pending.append(self.node.receive(a, '{"type":"message","ref":"a2","conversation":"%s",'
                                            '"client_msg_id":"\\udc00","body":"y"}' % conv_a))
        pending.append(self.node.receive(b, json.dumps({"type": "message", "ref": "b2", "conversation": conv_b,
                                                        "client_msg_id": "b2", "body": "two"})))
        self.node.db.release()
        for d in pending:
            self.successResultOf(d)
        self.assertEqual([f["ref"] for f in bt.of_type("ack")], ["b1", "b2"])
        self.assertEqual(bt.errors(), [])
        self.assertEqual([(e["code"], e["ref"]) for e in at.errors()], [("bad_request", "a1"), ("bad_request", "a2")])
        self.assertIn("'body'", at.errors()[0]["message"])
        self.assertIn("'client_msg_id'", at.errors()[1]["message"])
        self.assertEqual(self.errors.events, [])

    def test_ping_with_unusable_ref_gets_its_pong(self) -> None:
        """A ping whose ref is a lone surrogate is answered (without the ref)."""
        a, at = self.node.open("mallory")
        self.successResultOf(self.node.receive(a, '{"type":"ping","ref":"\\ud800"}'))
        self.assertEqual(at.of_type("pong"), [{"type": "pong"}])

    def test_sync_and_read_with_huge_integers_are_client_errors(self) -> None:
        """sync with after_seq 2^63 or 10^20, read with seq 2^63: bad_request, never unavailable."""
        a, at = self.node.open("alice")
        conv = self.conversation(a, at)
        for frame in ({"type": "sync", "conversation": conv, "after_seq": 2**63},
                      {"type": "sync", "conversation": conv, "after_seq": 10**20},
                      {"type": "sync", "conversation": conv, "limit": 10**20},
                      {"type": "read", "conversation": conv, "seq": 2**63}):
            self.successResultOf(self.node.receive(a, json.dumps(dict(frame, ref="r"))))
            self.assertEqual(at.errors()[-1]["code"], "bad_request", frame)
        self.successResultOf(self.node.receive(a, json.dumps({"type": "sync", "conversation": conv,
                                                               "after_seq": MAX_INT, "ref": "ok"})))
        self.assertEqual(at.of_type("history")[-1]["messages"], [])
        self.assertEqual(self.errors.events, [])


# -- the walk: every frame type and every REST route, malformed -------------

def spoiled_frames() -> list[tuple[str, Any]]:
    """(description, frame text) for every frame type: wrong types, huge
    integers, surrogates, NULs, nesting, missing fields."""
    out: list[tuple[str, Any]] = []
    bad_values: list[Any] = [None, True, 1.5, [], {}, [[[[["deep"]]]]], 2**63, 10**20, -1, "", SURROGATE,
                             "a\x00b", "x" * 5000, {"nested": {"a": [1, {"b": SURROGATE}]}}]
    for kind, frame in VALID_FRAMES.items():
        for field in [k for k in frame if k != "type"]:
            for value in bad_values:
                out.append((f"{kind}.{field}={value!r:.30}", dict(frame, **{field: value}, ref="r")))
            missing = dict(frame, ref="r")
            del missing[field]
            out.append((f"{kind} without {field}", missing))
    for kind in list(VALID_FRAMES) + ["pong", "hello", "", SURROGATE, "x\x00"]:
        out.append((f"bare {kind!r}", {"type": kind, "ref": "r"}))
    for text in ("", "null", "[]", '"ping"', "{", '{"type":1}', "[" * 3000, '{"type":"ping","ref":NaN}',
                 '{"type":"sync","conversation":"c","after_seq":1e400}'):
        out.append((f"text {text[:20]!r}", text))
    return out


class FrameWalkTests(unittest.SynchronousTestCase):
    """Every frame type, malformed, from every role: client codes only."""

    def test_every_frame_type_refuses_malformed_input_with_a_client_code(self) -> None:
        """Each malformed frame is answered by an error frame whose code is a
        client code (never unavailable); nothing is logged as an error and a
        bystander's connection receives nothing."""
        node = Node(self)
        errors = ErrorLog().install(self)
        _, bystander = node.open("bystander")
        sessions = [node.open(user, role) for user, role in
                    (("cust", "customer"), ("agent1", "agent"), ("boss", "admin"))]
        before = len(bystander.frames)
        for name, frame in spoiled_frames():
            for session, transport in sessions:
                sent = len(transport.frames)
                text = frame if isinstance(frame, str) else json.dumps(frame)
                self.successResultOf(node.receive(session, text))
                codes = {f["code"] for f in transport.frames[sent:] if isinstance(f, dict) and f.get("type") == "error"}
                self.assertTrue(codes <= CLIENT_CODES, (name, session.role, codes))
        self.assertEqual(len(bystander.frames), before)
        self.assertEqual(errors.events, [])


BAD_SEGMENTS = [b"\x00", b"a\x00b", b"\xff\xfe", b"\xed\xa0\x80", b"x" * 3000, b"..", b"%00"]
BAD_INTS = [b"9223372036854775808", b"100000000000000000000", b"18446744073709551616", b"-1", b"1e3", b"x",
            b"\x00", b"\xff", b" 1", b"1_0", b"0x10", b"\xd9\xa3"]
BAD_TEXTS = [b"\x00", b"a\x00b", b"\xff", b"\xed\xa0\x80", b"x" * 5000]
QUERY_INTS = ["after_seq", "before_seq", "limit", "waiting_min", "since"]
QUERY_TEXTS = ["q", "state", "team", "agent", "unread", "phone", "shortcut"]
BAD_BODIES = [b"\xff\xfe", b"[1]", b"null", b'"x"', b"{", b"NaN", b'{"a":NaN}', b'{"a":Infinity}',
              b'{"name":' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"name":' + b'{"a":' * 40 + b"1" + b"}" * 41,
              b'{"name":"\\ud800"}', b'{"\\ud800":"x"}', b'{"id":"a\\u0000b","name":"x","login":"a\\u0000"}',
              b'{"capacity":99999999999999999999999,"id":"z","login":"z","password":"12345678"}',
              b'{"attributes":{"a":"\\udc00"}}', b'{"body":"\\ud800","shortcut":"s","title":"\\u0000"}',
              b'{"login":"\\ud800","password":"\\ud800"}', b'{"refresh_token":"\\ud800"}',
              b'{"name":1e400}', b'{"phone":"\\u0000"}']


def leaves(resource: Any, prefix: list[bytes]) -> list[tuple[list[bytes], Any]]:
    """(path, resource) for every leaf of the URL tree."""
    out = []
    for name, child in sorted(getattr(resource, "children", {}).items()):
        if isinstance(child, (AsyncJsonResource, JsonResource)) or getattr(child, "isLeaf", False):
            out.append((prefix + [name], child))
        else:
            out.append((prefix + [name], child))
            out.extend(leaves(child, prefix + [name]))
    return out


def methods_of(resource: Any) -> list[bytes]:
    if isinstance(resource, AsyncJsonResource):
        return sorted(resource.routes) + [b"PUT"]
    return sorted(set(getattr(resource, "methods", (b"GET",))) | {b"POST"})


class RestWalkTests(unittest.SynchronousTestCase):
    """Every REST route, malformed, with an admin token and without one."""

    def test_every_route_answers_malformed_input_with_a_json_4xx(self) -> None:
        """Bad path segments, huge or non-numeric integers, NULs and invalid
        UTF-8 in queries, and bodies that are nested, not JSON, NaN, hold
        surrogates, NULs or huge integers: never a 5xx, every 4xx a JSON
        error with a code, nothing logged as an error."""
        node = Node(self)
        errors = ErrorLog().install(self)
        auth = {b"authorization": b"Bearer " + node.token("boss", "admin").encode()}
        seen = 0
        for path, resource in leaves(node.root, []):
            for method in methods_of(resource):
                cases: list[tuple[list[bytes], dict[bytes, list[bytes]], bytes]] = []
                for seg in BAD_SEGMENTS:
                    cases += [([seg], {}, b""), ([seg, b"messages"], {}, b""), ([b"customers", seg, b"export"], {}, b""),
                              ([seg, b"profile"], {}, b"")]
                for name in QUERY_INTS:
                    cases += [([], {name.encode(): [v]}, b"") for v in BAD_INTS]
                    cases += [([b"c1", b"messages"], {name.encode(): [v]}, b"") for v in BAD_INTS]
                for name in QUERY_TEXTS:
                    cases += [([], {name.encode(): [v]}, b"") for v in BAD_TEXTS]
                cases += [([], {}, body) for body in BAD_BODIES]
                cases += [([b"x", b"profile"], {}, body) for body in BAD_BODIES]
                for suffix, args, body in cases:
                    for headers in (auth, {}):
                        status, data, ctype = node.rest(method, path + suffix, args, body, headers)
                        where = (method, path + suffix, args, body[:40], status, data[:200])
                        self.assertLess(status, 500, where)
                        if status >= 400:
                            self.assertEqual(ctype, "application/json", where)
                            self.assertIn("code", json.loads(data)["error"], where)
                        seen += 1
        self.assertGreater(seen, 1000)
        self.assertEqual(errors.events, [])

    def test_findings_answer_400_or_404_not_503(self) -> None:
        """The reported cases: before_seq=2^63, after_seq=10^20, a NUL in a
        search, a deeply nested or surrogate body, a NUL in a path or a
        static path: each a client error with a JSON body."""
        node = Node(self)
        admin = {b"authorization": b"Bearer " + node.token("boss", "admin").encode()}
        conv = [b"api", b"v1", b"conversations", b"c1", b"messages"]
        cases = [
            (b"GET", conv, {b"before_seq": [b"9223372036854775808"]}, b"", 400),
            (b"GET", conv, {b"after_seq": [b"100000000000000000000"]}, b"", 400),
            (b"GET", [b"api", b"v1", b"search"], {b"q": [b"refund\x00"]}, b"", 400),
            (b"POST", [b"api", b"v1", b"teams"], {}, b'{"id":"t","name":' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
            (b"POST", [b"api", b"v1", b"teams"], {}, b'{"id":"t","name":' + b"[" * 40 + b"]" * 40 + b"}", 400),
            (b"POST", [b"api", b"v1", b"teams"], {}, b'{"id":"t","name":"\\ud800"}', 400),
            (b"GET", [b"api", b"v1", b"conversations", b"\x00", b"messages"], {}, b"", 404),
            (b"GET", [b"api", b"v1", b"agents", b"a\x00"], {}, b"", 404),
            (b"GET", [b"static", b"a\x00b.js"], {}, b"", 404),
        ]
        for method, path, args, body, expected in cases:
            status, data, ctype = node.rest(method, path, args, body, admin)
            self.assertEqual((status, ctype), (expected, "application/json"), (path, args, data))
            self.assertIn(json.loads(data)["error"]["code"], ("bad_request", "not_found"))


class RealHttpTests(unittest.TestCase):
    """The same findings over real HTTP through the Site (as reported)."""

    @inlineCallbacks
    def test_static_nul_and_huge_integers_over_http(self) -> None:
        """A NUL in a static path is a JSON 404 (was a 500 HTML page with a
        traceback); before_seq=2^63 and a NUL in a search are JSON 400s
        (were 503 "database is unavailable")."""
        server = yield start_server(self)
        http = http_client()
        base = f"http://127.0.0.1:{server.port}"
        bearer = {"Authorization": f"Bearer {token('boss', 'admin')}"}
        for path, expected in (("/static/a%00b.js", 404), ("/api/v1/search?q=a%00b", 400),
                               ("/api/v1/conversations/c1/messages?before_seq=9223372036854775808", 400),
                               ("/api/v1/conversations/c1/messages?after_seq=100000000000000000000", 400)):
            response = yield http.get(base + path, headers=bearer)
            body = yield response.content()
            self.assertEqual((response.code, response.headers.getRawHeaders("content-type")),
                             (expected, ["application/json"]), (path, body))
            self.assertIn("error", json.loads(body))

    @inlineCallbacks
    def test_websocket_surrogates_over_a_real_connection(self) -> None:
        """Over a real WebSocket: a ping with a lone-surrogate ref gets its pong
        (it got no answer), and a message with a lone-surrogate body gets
        bad_request while another user's message is acked."""
        from tests.support import close_client, connect

        server = yield start_server(self)
        mallory = yield connect(server.port, token("mallory"))
        bob = yield connect(server.port, token("bob"))
        self.addCleanup(close_client, mallory)
        self.addCleanup(close_client, bob)
        mallory.send('{"type":"ping","ref":"\\ud800"}')
        pong = yield mallory.next_frame("pong")
        self.assertNotIn("ref", pong)
        bob.send({"type": "start", "ref": "s"})
        conv_b = (yield bob.next_frame("conversation"))["conversation"]["id"]
        mallory.send({"type": "start", "ref": "s"})
        conv_m = (yield mallory.next_frame("conversation"))["conversation"]["id"]
        mallory.send('{"type":"message","ref":"m","conversation":"%s","client_msg_id":"m1","body":"\\ud800"}' % conv_m)
        bob.send({"type": "message", "ref": "b", "conversation": conv_b, "client_msg_id": "b1", "body": "hi"})
        error = yield mallory.next_frame("error")
        ack = yield bob.next_frame("ack")
        self.assertEqual((error["code"], error["ref"], ack["ref"]), ("bad_request", "m", "b"))


class PersisterIsolationTests(unittest.SynchronousTestCase):
    """Redis mode: the persister flushing the stream to SQL."""

    def setUp(self) -> None:
        from supportchat.metrics import Metrics
        from supportchat.redis.persister import Persister

        self.reactor = FakeReactor()
        self.db = HeldDatabase(SqliteEngine(self.mktemp() + ".sqlite3"), self.reactor)
        self.db.start()
        self.addCleanup(self.db.close)
        self.successResultOf(self.db.migrate())
        self.conv, _ = self.successResultOf(SqlConversationStore(self.db).open_conversation("alice", 1.0))
        self.persister = Persister(self.reactor, None, self.db, Metrics(), "p1")  # type: ignore[arg-type]
        self.errors = ErrorLog().install(self)

    def test_a_message_sql_cannot_store_does_not_stall_the_others(self) -> None:
        """A batch broken by one message SQL refuses is persisted message by
        message: the others are stored, the culprit is returned for the
        dead-letter stream (it used to be retried for ever, stalling all)."""
        from twisted.internet.defer import Deferred

        from supportchat.storage.models import Message

        msgs = [Message(self.conv.id, f"m{i}", i, "alice", "customer", f"k{i}", TEXT, body, 1000.0 + i)
                for i, body in enumerate(["one", "bad " + SURROGATE, "three"], start=1)]
        result, unstorable = self.successResultOf(Deferred.fromCoroutine(self.persister._commit(msgs)))
        self.assertEqual((result.inserted, unstorable), (2, {"m2"}))
        stored = self.successResultOf(SqlConversationStore(self.db).get_messages(self.conv.id, 0, 10))
        self.assertEqual([m.body for m in stored], ["one", "three"])
        self.assertIn("persist_batch", self.db.descs)
        self.assertEqual(self.errors.events, [])

    def test_a_seq_taken_by_another_writer_is_retried_in_place(self) -> None:
        """A batch whose insert found its seq taken by another writer
        (RowSkipped: rolled back) is committed again after a pause, like an
        outage, and never dead-lettered as unstorable."""
        from twisted.internet.defer import Deferred, fail

        from supportchat.storage.database import RowSkipped
        from supportchat.storage.models import Message

        real = self.db.run_interaction
        calls: list[str] = []

        def racing(desc: str, fn: Any, *args: Any) -> Any:
            calls.append(desc)
            if len(calls) == 1:
                return fail(RowSkipped("1 of 1 message rows clashed with another writer"))
            return real(desc, fn, *args)

        self.db.run_interaction = racing  # type: ignore[method-assign]
        msg = Message(self.conv.id, "m1", 1, "alice", "customer", "k1", TEXT, "hello", 1000.0)
        d = Deferred.fromCoroutine(self.persister._commit([msg]))
        self.assertNoResult(d)  # waiting before the retry
        self.reactor.advance(1)
        result, unstorable = self.successResultOf(d)
        self.assertEqual((result.inserted, unstorable, len(calls)), (1, set(), 2))
        self.flushLoggedErrors(RowSkipped)

    def test_with_wait_replicas_entries_reach_sql_only_once_replicated(self) -> None:
        """With ``[redis] wait_replicas`` the persister confirms, with a fence
        and WAIT on its own connection, that the replicas have the entries
        before it commits them, retrying in place while they are behind: an
        entry a fail-over would lose (never acknowledged) never reaches SQL
        ahead of its sender's retry."""
        from twisted.internet.defer import Deferred, fail, succeed

        from supportchat.redis.replicas import ReplicasBehind

        asked: list[tuple[Any, bool]] = []

        class Wait:
            def connection(self) -> str:
                return "persister-connection"

            def wait(self, connection: Any, fence: bool) -> "Deferred[None]":
                asked.append((connection, fence))
                if len(asked) == 1:
                    behind = ReplicasBehind("1 replica needed")
                    behind.retry_after = 2.0
                    return fail(behind)
                return succeed(None)

        self.persister._replica_wait = Wait()  # type: ignore[assignment]
        d = Deferred.fromCoroutine(self.persister._replicated())
        self.assertNoResult(d)  # behind: nothing may be committed yet
        self.reactor.advance(2)
        self.successResultOf(d)
        self.assertEqual(asked, [("persister-connection", True)] * 2)
