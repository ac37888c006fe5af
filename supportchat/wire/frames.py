"""Client frames of wire protocol v1 as typed classes, parsed at the edge.

``parse_frame`` turns a text frame into one of these or raises
:class:`FrameError` carrying the error code and the client's ``ref``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Union

MAX_ID_LENGTH = 128
MAX_REF_LENGTH = 128
# Integers the client sends (seq, after_seq, limit, rating, an integer ref)
# must fit the SQL BIGINT columns they are compared with or stored in.
MAX_INT = 2**63 - 1


class FrameError(Exception):
    """A client frame we refuse; becomes an ``error`` frame."""

    def __init__(self, code: str, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True)
class Ping:
    ref: Any = None
    plain: bool = False


@dataclass(frozen=True)
class Pong:
    """A client's answer to our ping (text "pong" or {"type":"pong"}): a heartbeat."""

    ref: Any = None


@dataclass(frozen=True)
class Start:
    ref: Any = None
    team: str = ""
    # The visitor's language (a BCP 47 tag such as "zh-CN"), shown to agents
    # with the queued conversation; "" when the client did not say.
    lang: str = ""


@dataclass(frozen=True)
class Accept:
    conversation: str
    ref: Any = None


@dataclass(frozen=True)
class SendMessage:
    conversation: str
    client_msg_id: str
    body: str
    ref: Any = None
    # Upload ids (POST /api/v1/attachments), at most MAX_ATTACHMENTS.
    attachments: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sync:
    conversation: str
    after_seq: int
    limit: int
    ref: Any = None


@dataclass(frozen=True)
class Typing:
    conversation: str
    ref: Any = None


@dataclass(frozen=True)
class Read:
    conversation: str
    seq: int
    ref: Any = None


@dataclass(frozen=True)
class SetStatus:
    """An agent sets their status: online, away or offline."""

    status: str
    ref: Any = None


@dataclass(frozen=True)
class Take:
    """An agent takes a conversation from the queue (``accept`` is the same)."""

    conversation: str
    ref: Any = None


@dataclass(frozen=True)
class Transfer:
    """To another agent or to a team's queue, with an internal note."""

    conversation: str
    to_agent: str | None
    to_team: str | None
    note: str | None
    ref: Any = None


@dataclass(frozen=True)
class Close:
    conversation: str
    ref: Any = None


@dataclass(frozen=True)
class Rate:
    """The customer's satisfaction rating (1-5) of a closed conversation."""

    conversation: str
    rating: int
    comment: str | None
    ref: Any = None


@dataclass(frozen=True)
class AddNote:
    """An internal note (staff only), with optional @mentions in ``body``."""

    conversation: str
    body: str
    ref: Any = None


MAX_NOTE_CHARS = 4000
MAX_ATTACHMENTS = 10
ClientFrame = Union[Ping, Pong, Start, Accept, SendMessage, Sync, Typing, Read, SetStatus, Take, Transfer, Close, Rate,
                    AddNote]


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or sent back, or None. JSON escapes
    can carry a lone surrogate (``"\\ud800"``), which no UTF-8 encoder,
    database or client accepts; NUL is refused by PostgreSQL and is never
    meaningful in chat text."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (it contains a lone surrogate)"
    return None


def _ref(data: dict[str, Any]) -> Any:
    """The client's ``ref`` if it can be echoed; an unusable one (too long,
    not valid Unicode, an integer beyond 64 bits, any other type) is
    dropped, so the answer still goes out, without it."""
    ref = data.get("ref")
    if ref is None or isinstance(ref, bool):
        return None
    if isinstance(ref, int):
        return ref if -MAX_INT <= ref <= MAX_INT else None
    if isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH and text_problem(ref) is None:
        return ref
    return None


def _check_text(key: str, value: str, ref: Any) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise FrameError("bad_request", f"'{key}' {problem}", ref)
    return value


def _str(data: dict[str, Any], key: str, ref: Any, max_len: int = MAX_ID_LENGTH) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise FrameError("bad_request", f"'{key}' must be a non-empty string", ref)
    if len(value) > max_len:
        raise FrameError("bad_request", f"'{key}' is longer than {max_len} characters", ref)
    return _check_text(key, value, ref)


def _int(data: dict[str, Any], key: str, ref: Any, default: int | None = None, low: int = 0,
         high: int = MAX_INT) -> int:
    value = data.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise FrameError("bad_request", f"'{key}' must be an integer", ref)
    if value < low:
        raise FrameError("bad_request", f"'{key}' must be at least {low}", ref)
    if value > high:
        raise FrameError("bad_request", f"'{key}' must be at most {high}", ref)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# A BCP 47 language tag, loosely: "en", "zh-CN", "zh-Hans-CN", "es-419".
_LANG_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}")

# One decoder for every frame (json.loads with an option builds a new one per
# call). NaN and Infinity are not JSON: refused.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_frame(text: str, max_body_chars: int, sync_limit_max: int) -> ClientFrame:
    """Parse and validate one client text frame."""
    if text.strip() == "ping":
        return Ping(plain=True)
    if text.strip() == "pong":
        return Pong()
    try:
        data = _DECODER.decode(text)
    except (ValueError, RecursionError):  # deeply nested arrays exhaust the parser
        raise FrameError("bad_request", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError("bad_request", "frame must be a JSON object")
    ref = _ref(data)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise FrameError("bad_request", "'type' must be a string", ref)
    if kind == "ping":
        return Ping(ref)
    if kind == "pong":
        return Pong(ref)
    if kind == "start":
        team = data.get("team", "")
        if not isinstance(team, str) or len(team) > MAX_ID_LENGTH:
            raise FrameError("bad_request", f"'team' must be a string of at most {MAX_ID_LENGTH} characters", ref)
        lang = data.get("lang", "")
        if not isinstance(lang, str) or (lang and not _LANG_TAG.fullmatch(lang)):
            raise FrameError("bad_request", "'lang' must be a language tag such as \"en\" or \"zh-CN\"", ref)
        return Start(ref, _check_text("team", team, ref), lang)
    if kind == "accept":
        return Accept(_str(data, "conversation", ref), ref)
    if kind == "message":
        conversation = _str(data, "conversation", ref)
        client_msg_id = _str(data, "client_msg_id", ref)
        attachments = _attachments(data, ref)
        body = data.get("body", "" if attachments else None)
        if not isinstance(body, str):
            raise FrameError("bad_request", "'body' must be a string", ref)
        if not body.strip() and not attachments:
            raise FrameError("bad_request", "'body' must not be empty", ref)
        if len(body) > max_body_chars:
            raise FrameError("too_large", f"'body' is longer than {max_body_chars} characters", ref)
        _check_text("body", body, ref)
        return SendMessage(conversation, client_msg_id, body, ref, attachments)
    if kind == "sync":
        conversation = _str(data, "conversation", ref)
        after = _int(data, "after_seq", ref, default=0)
        limit = _int(data, "limit", ref, default=100, low=1)
        return Sync(conversation, after, min(limit, sync_limit_max), ref)
    if kind == "typing":
        return Typing(_str(data, "conversation", ref), ref)
    if kind == "read":
        return Read(_str(data, "conversation", ref), _int(data, "seq", ref), ref)
    if kind in ("status", "take", "transfer", "close", "rate", "note"):
        return _parse_workflow(kind, data, ref)
    raise FrameError("bad_request", f"unknown frame type {kind[:40]!r}", ref)


def _attachments(data: dict[str, Any], ref: Any) -> tuple[str, ...]:
    """A message's ``attachments``: distinct upload ids, at most MAX_ATTACHMENTS."""
    value = data.get("attachments")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FrameError("bad_request", "'attachments' must be a list of ids", ref)
    if len(value) > MAX_ATTACHMENTS:
        raise FrameError("too_large", f"at most {MAX_ATTACHMENTS} attachments per message", ref)
    ids = tuple(_str({"attachments": v}, "attachments", ref) for v in value)
    if len(set(ids)) != len(ids):
        raise FrameError("bad_request", "'attachments' lists an id twice", ref)
    return ids


def _optional_str(data: dict[str, Any], key: str, ref: Any, max_len: int) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FrameError("bad_request", f"'{key}' must be a string", ref)
    if len(value) > max_len:
        raise FrameError("too_large", f"'{key}' is longer than {max_len} characters", ref)
    return _check_text(key, value, ref) or None


def _parse_workflow(kind: str, data: dict[str, Any], ref: Any) -> ClientFrame:
    if kind == "status":
        status = data.get("status")
        if status not in ("online", "away", "offline"):
            raise FrameError("bad_request", "'status' must be online, away or offline", ref)
        return SetStatus(str(status), ref)
    conversation = _str(data, "conversation", ref)
    if kind == "take":
        return Take(conversation, ref)
    if kind == "close":
        return Close(conversation, ref)
    if kind == "note":
        body = _optional_str(data, "body", ref, MAX_NOTE_CHARS)
        if body is None or not body.strip():
            raise FrameError("bad_request", "'body' must be a non-empty string", ref)
        return AddNote(conversation, body, ref)
    if kind == "transfer":
        to_agent = _optional_str(data, "to_agent", ref, MAX_ID_LENGTH)
        to_team = _optional_str(data, "to_team", ref, MAX_ID_LENGTH)
        if (to_agent is None) == (to_team is None):
            raise FrameError("bad_request", "give exactly one of 'to_agent' and 'to_team'", ref)
        return Transfer(conversation, to_agent, to_team, _optional_str(data, "note", ref, MAX_NOTE_CHARS), ref)
    rating = data.get("rating")
    if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
        raise FrameError("bad_request", "'rating' must be an integer between 1 and 5", ref)
    return Rate(conversation, rating, _optional_str(data, "comment", ref, MAX_NOTE_CHARS), ref)


def reply(frame: dict[str, Any], ref: Any) -> dict[str, Any]:
    """A direct reply carries the client's ``ref`` when it sent one."""
    if ref is not None:
        frame["ref"] = ref
    return frame


def error_frame(code: str, message: str, ref: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    return frame
