"""The JSON form of a message in the stream, the recent set and idempotency keys."""

from __future__ import annotations

import json
from typing import Any

from supportchat.storage.models import Message, principal_key

# Marks a message whose sender_id is a principal key. Entries written by
# older nodes (before identities were namespaced) lack it: their customer
# senders are plain ids, turned into keys when read.
KEYED = "pk"


def split_message_json(fields: dict[str, Any]) -> tuple[str, str]:
    """(head, tail) such that head + str(seq) + tail is the message JSON.
    ``seq`` is the first key, so no body text can be mistaken for it."""
    rest = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return '{"seq":', "," + rest[1:] if rest != "{}" else "}"


def message_fields(msg: Message) -> dict[str, Any]:
    return {
        "conversation_id": msg.conversation_id,
        "msg_id": msg.msg_id,
        "sender_id": msg.sender_id,
        "sender_role": msg.sender_role,
        "client_msg_id": msg.client_msg_id,
        "kind": msg.kind,
        "body": msg.body,
        "ts": msg.ts,
        "data": msg.data,
        KEYED: 1,
    }


def frame_tail(draft: Message) -> str:
    """The message's delivery frame (``Message.to_wire``) as JSON after its
    seq: ``'{"seq":' + str(seq) + frame_tail(draft)`` is the frame of the
    message once the APPEND script has given it ``seq``."""
    frame = draft.to_wire()
    del frame["seq"]
    rest = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
    return "," + rest[1:]


def encode_message(msg: Message) -> str:
    head, tail = split_message_json(message_fields(msg))
    return f"{head}{msg.seq}{tail}"


def decode_message(text: str) -> Message:
    obj = json.loads(text)
    sender_id = obj["sender_id"] if obj.get(KEYED) else principal_key(obj["sender_role"], obj["sender_id"])
    return Message(
        conversation_id=obj["conversation_id"], msg_id=obj["msg_id"], seq=int(obj["seq"]),
        sender_id=sender_id, sender_role=obj["sender_role"], client_msg_id=obj.get("client_msg_id"),
        kind=obj["kind"], body=obj["body"], ts=float(obj["ts"]), data=obj.get("data"),
    )
