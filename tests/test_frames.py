"""Tests for supportchat.wire.frames: parsing and validating client frames."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from supportchat.wire.frames import (
    MAX_ID_LENGTH,
    Accept,
    FrameError,
    Ping,
    Pong,
    Read,
    SendMessage,
    Start,
    Sync,
    Typing,
    error_frame,
    parse_frame,
)

MAX_BODY = 50
SYNC_MAX = 200


def parse(obj, max_body_chars=MAX_BODY, sync_limit_max=SYNC_MAX):
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return parse_frame(text, max_body_chars, sync_limit_max)


class ParseTests(SynchronousTestCase):
    def test_ping_json(self):
        """A JSON ping parses into Ping carrying its ref."""
        self.assertEqual(parse({"type": "ping", "ref": 7}), Ping(ref=7, plain=False))

    def test_ping_plain_text(self):
        """The plain-text 'ping' heartbeat parses into a plain Ping, surrounding whitespace allowed."""
        for text in ("ping", " ping\n"):
            self.assertEqual(parse(text), Ping(plain=True))

    def test_start(self):
        """A start frame parses into Start."""
        self.assertEqual(parse({"type": "start", "ref": "r1"}), Start(ref="r1"))

    def test_accept(self):
        """An accept frame carries its conversation."""
        self.assertEqual(parse({"type": "accept", "conversation": "c1", "ref": 2}), Accept("c1", 2))

    def test_message(self):
        """A message frame carries conversation, client_msg_id and body."""
        frame = parse({"type": "message", "conversation": "c1", "client_msg_id": "m1", "body": "hello", "ref": 3})
        self.assertEqual(frame, SendMessage("c1", "m1", "hello", 3))

    def test_sync(self):
        """A sync frame carries conversation, after_seq and limit."""
        frame = parse({"type": "sync", "conversation": "c1", "after_seq": 10, "limit": 20, "ref": 4})
        self.assertEqual(frame, Sync("c1", 10, 20, 4))

    def test_typing(self):
        """A typing frame carries its conversation."""
        self.assertEqual(parse({"type": "typing", "conversation": "c1"}), Typing("c1"))

    def test_read(self):
        """A read frame carries conversation and seq."""
        self.assertEqual(parse({"type": "read", "conversation": "c1", "seq": 5, "ref": "x"}), Read("c1", 5, "x"))

    def test_no_ref(self):
        """Frames without ref have ref None."""
        self.assertIsNone(parse({"type": "start"}).ref)

    def test_unusable_refs_dropped(self):
        """A ref that is a bool, float, object or over-long string is not echoed."""
        for ref in (True, 1.5, {"a": 1}, [1], "r" * 129):
            self.assertIsNone(parse({"type": "start", "ref": ref}).ref, repr(ref))
        self.assertEqual(parse({"type": "start", "ref": "r" * 128}).ref, "r" * 128)

    def test_extra_fields_ignored(self):
        """Unknown extra fields do not make a frame invalid."""
        self.assertEqual(parse({"type": "typing", "conversation": "c1", "extra": 1}), Typing("c1"))


class SyncLimitTests(SynchronousTestCase):
    def test_defaults(self):
        """Without after_seq and limit, sync starts at 0 with a limit of 100."""
        self.assertEqual(parse({"type": "sync", "conversation": "c1"}), Sync("c1", 0, 100))

    def test_clamped(self):
        """A limit above sync_limit_max is clamped to it."""
        frame = parse({"type": "sync", "conversation": "c1", "limit": 10_000})
        self.assertEqual(frame.limit, SYNC_MAX)

    def test_default_clamped(self):
        """The default limit is clamped to a smaller sync_limit_max."""
        frame = parse({"type": "sync", "conversation": "c1"}, sync_limit_max=30)
        self.assertEqual(frame.limit, 30)

    def test_limit_at_least_one(self):
        """A limit below 1 is refused."""
        for limit in (0, -5):
            e = self.assertRaises(FrameError, parse, {"type": "sync", "conversation": "c1", "limit": limit, "ref": 1})
            self.assertEqual((e.code, e.ref), ("bad_request", 1))

    def test_after_seq_not_negative(self):
        """A negative after_seq is refused."""
        e = self.assertRaises(FrameError, parse, {"type": "sync", "conversation": "c1", "after_seq": -1})
        self.assertEqual(e.code, "bad_request")


class ErrorTests(SynchronousTestCase):
    def assertBad(self, obj, code="bad_request", ref=None, **kw) -> FrameError:
        e = self.assertRaises(FrameError, parse, obj, **kw)
        self.assertEqual(e.code, code)
        self.assertEqual(e.ref, ref)
        self.assertTrue(e.message)
        return e

    def test_malformed_json(self):
        """Text that is not JSON is a bad_request."""
        self.assertBad('{"type": "ping"')
        self.assertBad("pang")

    def test_pong_is_a_heartbeat_frame(self):
        """A client's pong (plain text or JSON) parses as a heartbeat, not an error."""
        self.assertIsInstance(parse("pong"), Pong)
        self.assertEqual(parse('{"type":"pong","ref":4}'), Pong(4))

    def test_deeply_nested_json(self):
        """Deeply nested JSON within the message size limit is a bad_request, not a crash."""
        self.assertBad("[" * 65536)
        self.assertBad('{"type": "ping", "x": ' + "[" * 30000 + "]" * 30000 + "}")

    def test_non_object(self):
        """JSON that is not an object is a bad_request."""
        for text in ("[1, 2]", '"ping"', "3", "null", "true"):
            self.assertBad(text)

    def test_missing_type(self):
        """A frame without a string type is a bad_request, with the ref echoed."""
        self.assertBad({"ref": "a"}, ref="a")
        self.assertBad({"type": 3, "ref": "a"}, ref="a")

    def test_unknown_type(self):
        """An unknown type is a bad_request with the ref echoed and the name cut short."""
        e = self.assertBad({"type": "launch", "ref": 9}, ref=9)
        self.assertIn("launch", e.message)
        e = self.assertBad({"type": "x" * 5000, "ref": 9}, ref=9)
        self.assertLess(len(e.message), 200)

    def test_ref_echoed(self):
        """Errors carry the client's ref (string or integer) so it can match them."""
        for ref in ("req-1", 42):
            self.assertBad({"type": "accept", "ref": ref}, ref=ref)

    def test_missing_fields(self):
        """Each required field missing is a bad_request naming the field."""
        full = {"type": "message", "conversation": "c1", "client_msg_id": "m1", "body": "hi", "ref": 1}
        for field in ("conversation", "client_msg_id", "body"):
            frame = dict(full)
            del frame[field]
            e = self.assertBad(frame, ref=1)
            self.assertIn(field, e.message)
        for frame, field in (({"type": "accept"}, "conversation"), ({"type": "typing"}, "conversation"),
                             ({"type": "sync"}, "conversation"), ({"type": "read", "conversation": "c"}, "seq"),
                             ({"type": "read", "seq": 1}, "conversation")):
            e = self.assertBad(frame)
            self.assertIn(field, e.message)

    def test_bool_for_int(self):
        """true/false are not accepted as integers."""
        self.assertBad({"type": "read", "conversation": "c1", "seq": True})
        self.assertBad({"type": "sync", "conversation": "c1", "after_seq": False})
        self.assertBad({"type": "sync", "conversation": "c1", "limit": True})

    def test_other_types_for_int(self):
        """Strings, floats and null are not accepted as integers."""
        for value in ("5", 5.0, None, [5]):
            self.assertBad({"type": "read", "conversation": "c1", "seq": value})

    def test_int_for_string(self):
        """Numbers are not accepted where a string id or body is expected."""
        self.assertBad({"type": "accept", "conversation": 123})
        self.assertBad({"type": "message", "conversation": "c1", "client_msg_id": 1, "body": "hi"})
        self.assertBad({"type": "message", "conversation": "c1", "client_msg_id": "m1", "body": 5})

    def test_empty_strings(self):
        """Empty ids and empty or blank bodies are refused."""
        self.assertBad({"type": "accept", "conversation": ""})
        for body in ("", "   \n\t"):
            e = self.assertBad({"type": "message", "conversation": "c1", "client_msg_id": "m1", "body": body, "ref": 2},
                               ref=2)
            self.assertIn("body", e.message)

    def test_body_limit(self):
        """A body over max_body_chars is too_large (ref echoed); exactly the limit is fine."""
        frame = {"type": "message", "conversation": "c1", "client_msg_id": "m1", "ref": "r"}
        self.assertBad(dict(frame, body="x" * (MAX_BODY + 1)), code="too_large", ref="r")
        self.assertEqual(parse(dict(frame, body="x" * MAX_BODY)).body, "x" * MAX_BODY)

    def test_body_limit_counts_characters(self):
        """The body limit counts characters, not UTF-8 bytes."""
        frame = {"type": "message", "conversation": "c1", "client_msg_id": "m1", "body": "\U0001f600" * MAX_BODY}
        self.assertEqual(len(parse(frame).body), MAX_BODY)
        frame["body"] += "é"
        self.assertBad(frame, code="too_large")

    def test_overlong_ids(self):
        """Ids longer than the maximum are refused; the maximum itself is fine."""
        ok = "c" * MAX_ID_LENGTH
        long = "c" * (MAX_ID_LENGTH + 1)
        self.assertEqual(parse({"type": "accept", "conversation": ok}).conversation, ok)
        self.assertBad({"type": "accept", "conversation": long, "ref": 1}, ref=1)
        self.assertBad({"type": "message", "conversation": "c1", "client_msg_id": long, "body": "hi"})
        self.assertBad({"type": "sync", "conversation": long})


class ErrorFrameTests(SynchronousTestCase):
    def test_error_frame(self):
        """error frames carry code and message, and ref only when there is one."""
        self.assertEqual(error_frame("bad_request", "nope"), {"type": "error", "code": "bad_request", "message": "nope"})
        self.assertEqual(error_frame("too_large", "big", 0)["ref"], 0)
