"""Property tests (Hypothesis): arbitrary JSON never hurts the server or
another user (issue 12).

- Every client frame type, with arbitrary JSON values in every field (and
  arbitrary whole frames), against the real handlers on real SQLite (group
  commit held so the other user's messages share the batch) and on the
  in-memory twins: never an ``unavailable`` error, never an error logged;
  a customer's frames have no effect on another customer's connection,
  whose messages sent meanwhile are all acknowledged.
- Every REST route of the URL tree, with arbitrary path segments, query
  parameters and bodies, with and without credentials: never a 5xx, and
  every 4xx has a JSON error body.

Deterministic and bounded: derandomized, no example database, a fixed
number of examples per property (well under a minute in all).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.hostile import ErrorLog, Node
from tests.test_hostile_input import CLIENT_CODES, leaves, methods_of

BOUNDED = settings(max_examples=100, deadline=None, derandomize=True, database=None, print_blob=False,
                   suppress_health_check=list(HealthCheck))

OWN = "$own"  # replaced by the sender's own conversation id, to reach the handlers' inner paths
SPECIAL_TEXT = ["", " ", "\ud800", "a\udc00b", "a\x00b", "x" * 200, "x" * 5000, "online", "sales", OWN, "💬", "\u202e"]
texts = st.one_of(st.text(max_size=12), st.sampled_from(SPECIAL_TEXT),
                  st.text(max_size=4).map(lambda s: s + "\ud83d" + s))
integers = st.one_of(st.integers(-3, 10), st.integers(), st.sampled_from([2**63 - 1, 2**63, 10**20, -(2**63), 2**64]))
scalars = st.one_of(st.none(), st.booleans(), integers, st.floats(allow_nan=False, allow_infinity=False), texts)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=8)

FIELDS = {
    "ping": [], "pong": [], "start": ["team"], "accept": ["conversation"], "take": ["conversation"],
    "message": ["conversation", "client_msg_id", "body"], "sync": ["conversation", "after_seq", "limit"],
    "typing": ["conversation"], "read": ["conversation", "seq"], "status": ["status"],
    "transfer": ["conversation", "to_agent", "to_team", "note"], "close": ["conversation"],
    "rate": ["conversation", "rating", "comment"],
}


def field_values(name: str) -> Any:
    """Values for one field: plausible ones (so the frame reaches the
    handlers and the store) mixed with arbitrary JSON."""
    plausible = {
        "conversation": st.one_of(st.just(OWN), st.just(OWN), texts),
        "after_seq": integers, "limit": integers, "seq": integers, "rating": integers,
        "status": st.sampled_from(["online", "away", "offline"]),
        "ref": st.one_of(texts, integers),
    }.get(name, texts)
    return st.one_of(plausible, plausible, json_values)


def typed_frame(kind: str) -> Any:
    """A frame of ``kind``: usually every field present, sometimes any subset."""
    fields = {name: field_values(name) for name in FIELDS[kind]}
    extra = {"ref": field_values("ref"), "extra": json_values}
    return st.one_of(
        st.fixed_dictionaries({"type": st.just(kind), **fields}, optional=extra),
        st.fixed_dictionaries({"type": st.just(kind)}, optional={**fields, **extra}),
    )


frames = st.one_of(*[typed_frame(k) for k in FIELDS],
                   st.dictionaries(st.one_of(st.sampled_from(["type", "ref"]), texts), json_values, max_size=4),
                   json_values)


def render(frame: Any, own: str) -> str:
    """The frame's text, with OWN standing for the sender's conversation."""
    return json.dumps(frame).replace(json.dumps(OWN)[1:-1], own)


class FramePropertyTests(unittest.SynchronousTestCase):
    """Arbitrary frames from one user, while another user chats."""

    counter = itertools.count()

    def node(self, storage: str) -> Node:
        if not hasattr(self, "_node"):
            self._node = Node(self, storage)
            self._errors = ErrorLog().install(self)
        return self._node

    def start(self, node: Node, session: Any, transport: Any) -> str:
        self.successResultOf(node.receive(session, '{"type":"start","ref":"s"}'))
        return str(transport.of_type("conversation")[-1]["conversation"]["id"])

    def check(self, storage: str, role: str, sent: list[Any]) -> None:
        node = self.node(storage)
        n = next(self.counter)
        a, at = node.open(f"mallory{n}", role)
        b, bt = node.open(f"bob{n}")
        own = self.start(node, *node.open(f"mallory{n}")) if role == "customer" else "c-none"
        conv_b = self.start(node, b, bt)
        seen = len(bt.frames)
        if node.db is not None:
            node.db.hold = True
        pending = [node.receive(b, json.dumps({"type": "message", "ref": "b1", "conversation": conv_b,
                                               "client_msg_id": f"b1-{n}", "body": "one"}))]
        pending += [node.receive(a, render(frame, own)) for frame in sent]
        pending.append(node.receive(b, json.dumps({"type": "message", "ref": "b2", "conversation": conv_b,
                                                   "client_msg_id": f"b2-{n}", "body": "two"})))
        if node.db is not None:
            node.db.release()
        for d in pending:
            self.successResultOf(d)
        codes = [f["code"] for f in at.errors()]
        self.assertTrue(set(codes) <= CLIENT_CODES, codes)
        self.assertEqual(self._errors.events, [])
        got = bt.frames[seen:]
        self.assertEqual([f["ref"] for f in got if f.get("type") == "ack"], ["b1", "b2"])
        self.assertEqual(bt.errors(), [])
        if role == "customer":
            others = [f for f in got if f.get("type") != "ack"
                      and not (f.get("type") == "queue" and f.get("conversation") == conv_b)]
            self.assertEqual(others, [])

    @BOUNDED
    @given(sent=st.lists(frames, min_size=1, max_size=3))
    def test_customer_frames_on_sqlite(self, sent: list[Any]) -> None:
        """Real SQLite: a customer's arbitrary frames answer client codes only,
        log nothing, and leave another customer (whose messages share the
        group commit) untouched and acknowledged."""
        self.check("sqlite", "customer", sent)

    @BOUNDED
    @given(sent=st.lists(frames, min_size=1, max_size=3), role=st.sampled_from(["agent", "admin"]))
    def test_staff_frames_on_sqlite(self, sent: list[Any], role: str) -> None:
        """Real SQLite: an agent's or admin's arbitrary frames answer client
        codes only and log nothing; the customer chatting meanwhile is acked."""
        self.check("sqlite", role, sent)

    @BOUNDED
    @given(sent=st.lists(frames, min_size=1, max_size=3),
           role=st.sampled_from(["customer", "customer", "agent", "admin"]))
    def test_frames_on_memory_twins(self, sent: list[Any], role: str) -> None:
        """The in-memory twins: the same guarantees as on SQLite."""
        self.check("memory", role, sent)


segments = st.one_of(st.binary(max_size=8), texts.map(lambda s: s.encode("utf-8", "surrogatepass")),
                     st.sampled_from([b"messages", b"export", b"profile", b"customers", b"c1", b"\x00", b"ann"]))
PARAMS = ["after_seq", "before_seq", "limit", "q", "state", "team", "agent", "waiting_min", "unread", "since",
          "phone", "shortcut"]
arg_values = st.one_of(st.binary(max_size=12), integers.map(lambda i: str(i).encode()),
                       texts.map(lambda s: s.encode("utf-8", "surrogatepass")))
BODY_KEYS = ["login", "password", "refresh_token", "id", "name", "role", "team", "capacity", "disabled", "status",
             "scope", "shortcut", "title", "body", "email", "phone", "attributes"]
bodies = st.one_of(
    st.just(b""), st.binary(max_size=40), json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.one_of(st.sampled_from(BODY_KEYS), texts), json_values, max_size=5)
    .map(lambda v: json.dumps(v).encode()),
)


class RestPropertyTests(unittest.SynchronousTestCase):
    """Arbitrary requests to every route of the URL tree."""

    def setUp(self) -> None:
        self.node = Node(self)
        self.errors = ErrorLog().install(self)
        admin = {b"authorization": b"Bearer " + self.node.token("boss", "admin").encode()}
        status, body, _ = self.node.rest(b"POST", [b"api", b"v1", b"agents"], {}, json.dumps(
            {"login": "ann", "password": "correct horse", "name": "Ann"}).encode(), admin)
        self.assertEqual(status, 201, body)
        self.routes = [(path, m) for path, resource in leaves(self.node.root, []) for m in methods_of(resource)]
        self.auth = {
            "admin": admin, "none": {},
            "agent": {b"authorization": b"Bearer " + self.node.token("ann", "agent").encode()},
            "customer": {b"authorization": b"Bearer " + self.node.token("cust", "customer").encode()},
            "garbage": {b"authorization": b"Bearer \xff\x00not-a-token"},
        }

    @settings(BOUNDED, max_examples=200)
    @given(data=st.data(), suffix=st.lists(segments, max_size=3),
           args=st.dictionaries(st.one_of(st.sampled_from(PARAMS), st.text(max_size=4)).map(str.encode),
                                st.lists(arg_values, min_size=1, max_size=2), max_size=3),
           body=bodies, who=st.sampled_from(["admin", "admin", "agent", "customer", "none", "garbage"]))
    def test_arbitrary_requests_never_5xx(self, data: Any, suffix: list[bytes], args: dict[bytes, list[bytes]],
                                          body: bytes, who: str) -> None:
        """Any route, method, path below it, query and body, with any of the
        roles' tokens or none: never a 5xx, every 4xx a JSON error body,
        nothing logged as an error."""
        path, method = data.draw(st.sampled_from(self.routes))
        status, answer, ctype = self.node.rest(method, path + suffix, args, body, self.auth[who])
        where = (method, path + suffix, args, body[:60], who, status, answer[:200])
        self.assertLess(status, 500, where)
        if status >= 400:
            self.assertEqual(ctype, "application/json", where)
            self.assertIn("code", json.loads(answer)["error"], where)
        self.assertEqual(self.errors.events, [], where)
