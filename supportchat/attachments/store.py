"""Where attachment metadata lives: the ``AttachmentStore`` seam, with
:class:`SqlAttachmentStore` (table ``attachments``, migration 010) and the
twin :class:`MemoryAttachmentStore`; both pass ``AttachmentStoreContract``
(tests/test_attachments.py).

The claim is how a message takes its attachments: all of them or none,
only the uploader's, each once. The claim records the message's sender key
and ``client_msg_id``, so the same message sent again (a retry after a lost
ack) claims them again and then meets its own idempotency key; any other
message gets ``NotFound``, exactly as for an id that does not exist.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed

from supportchat.attachments.models import Attachment
from supportchat.storage.database import Cursor, Database
from supportchat.storage.models import NotFound, StoreError


class TooManyAttachments(StoreError):
    code = "limit_exceeded"


def _not_found() -> NotFound:
    return NotFound("no such attachment")


class AttachmentStore(Protocol):
    def add(self, attachment: Attachment) -> "Deferred[None]": ...
    def get(self, attachment_id: str) -> "Deferred[Attachment | None]": ...
    def claim(self, ids: list[str], uploader: str, claim: str, conversation_id: str, now: float,
              per_conversation: int) -> "Deferred[list[Attachment]]":
        """Claim ``ids`` (in that order) for one message; NotFound when any
        is unknown, another's, claimed by another message or meant for
        another conversation; TooManyAttachments past ``per_conversation``."""
    def bytes_since(self, uploader: str, since: float) -> "Deferred[int]":
        """Bytes stored for ``uploader``'s uploads created after ``since``."""
    def orphans(self, before: float, limit: int) -> "Deferred[list[Attachment]]":
        """Unclaimed uploads created before ``before``, oldest first."""
    def delete(self, attachment_id: str) -> "Deferred[list[str]]":
        """Remove the row if no message has claimed it (a claim that wins
        the race keeps it); the blob keys it held that no other row holds."""


def _in_use(rows: list[Attachment], key: str) -> bool:
    return any(a.blob_key == key or a.thumb_key == key for a in rows)


class MemoryAttachmentStore:
    """The twin: rows in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, Attachment] = {}

    def add(self, attachment: Attachment) -> "Deferred[None]":
        if attachment.id in self.rows:
            return fail(StoreError("duplicate attachment id"))
        self.rows[attachment.id] = attachment
        return succeed(None)

    def get(self, attachment_id: str) -> "Deferred[Attachment | None]":
        return succeed(self.rows.get(attachment_id))

    def claim(self, ids: list[str], uploader: str, claim: str, conversation_id: str, now: float,
              per_conversation: int) -> "Deferred[list[Attachment]]":
        found = [self.rows.get(i) for i in ids]
        for a in found:
            if (a is None or a.uploader != uploader or a.claim not in (None, claim)
                    or a.conversation_id not in (None, conversation_id)):
                return fail(_not_found())
        new = [a for a in found if a is not None and a.claim is None]
        used = sum(1 for a in self.rows.values() if a.conversation_id == conversation_id and a.claim is not None)
        if new and used + len(new) > per_conversation:
            return fail(TooManyAttachments(f"at most {per_conversation} attachments per conversation"))
        out = []
        for a in found:
            assert a is not None
            if a.claim is None:
                a = replace(a, claim=claim, conversation_id=conversation_id, claimed_at=now)
                self.rows[a.id] = a
            out.append(a)
        return succeed(out)

    def bytes_since(self, uploader: str, since: float) -> "Deferred[int]":
        return succeed(sum(a.size for a in self.rows.values() if a.uploader == uploader and a.created_at > since))

    def orphans(self, before: float, limit: int) -> "Deferred[list[Attachment]]":
        rows = sorted((a for a in self.rows.values() if a.claim is None and a.created_at < before),
                      key=lambda a: (a.created_at, a.id))
        return succeed(rows[:limit])

    def delete(self, attachment_id: str) -> "Deferred[list[str]]":
        gone = self.rows.get(attachment_id)
        if gone is None or gone.claim is not None:
            return succeed([])
        del self.rows[attachment_id]
        keys = [k for k in (gone.blob_key, gone.thumb_key) if k is not None]
        return succeed([k for k in keys if not _in_use(list(self.rows.values()), k)])


_COLS = ("id, uploader, name, content_type, size, sha256, width, height, blob_key, thumb_key, thumb_type, scan, "
         "created_at, conversation_id, claim, claimed_at")


def _row(r: Any) -> Attachment:
    return Attachment(
        id=r[0], uploader=r[1], name=r[2], content_type=r[3], size=int(r[4]), sha256=r[5],
        width=None if r[6] is None else int(r[6]), height=None if r[7] is None else int(r[7]),
        blob_key=r[8], thumb_key=r[9], thumb_type=r[10], scan=r[11], created_at=float(r[12]),
        conversation_id=r[13], claim=r[14], claimed_at=None if r[15] is None else float(r[15]),
    )


def _add_txn(cur: Cursor, a: Attachment) -> None:
    cur.execute(f"INSERT INTO attachments ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
        a.id, a.uploader, a.name, a.content_type, a.size, a.sha256, a.width, a.height, a.blob_key, a.thumb_key,
        a.thumb_type, a.scan, a.created_at, a.conversation_id, a.claim, a.claimed_at,
    ))


def _get_txn(cur: Cursor, attachment_id: str) -> Attachment | None:
    cur.execute(f"SELECT {_COLS} FROM attachments WHERE id = ?", (attachment_id,))
    r = cur.fetchone()
    return None if r is None else _row(r)


def _claim_txn(cur: Cursor, ids: list[str], uploader: str, claim: str, conversation_id: str, now: float,
               per_conversation: int) -> list[Attachment]:
    marks = ", ".join("?" for _ in ids)
    cur.execute(f"SELECT {_COLS} FROM attachments WHERE id IN ({marks}) AND uploader = ?" + cur.engine.for_update(),
                (*ids, uploader))
    rows = {a.id: a for a in map(_row, cur.fetchall())}
    found = [rows.get(i) for i in ids]
    for a in found:
        if a is None or a.claim not in (None, claim) or a.conversation_id not in (None, conversation_id):
            raise _not_found()
    new = [a.id for a in found if a is not None and a.claim is None]
    if not new:
        return [a for a in found if a is not None]
    cur.execute("SELECT COUNT(*) FROM attachments WHERE conversation_id = ? AND claim IS NOT NULL", (conversation_id,))
    used = int(cur.fetchone()[0])
    if used + len(new) > per_conversation:
        raise TooManyAttachments(f"at most {per_conversation} attachments per conversation")
    marks = ", ".join("?" for _ in new)
    cur.execute(f"UPDATE attachments SET claim = ?, conversation_id = ?, claimed_at = ? "
                f"WHERE id IN ({marks}) AND claim IS NULL", (claim, conversation_id, now, *new))
    if cur.rowcount != len(new):
        raise _not_found()  # another message claimed one meanwhile; roll back
    return [replace(a, claim=claim, conversation_id=conversation_id, claimed_at=now) if a.id in new else a
            for a in found if a is not None]


def _bytes_since_txn(cur: Cursor, uploader: str, since: float) -> int:
    cur.execute("SELECT COALESCE(SUM(size), 0) FROM attachments WHERE uploader = ? AND created_at > ?",
                (uploader, since))
    return int(cur.fetchone()[0])


def _orphans_txn(cur: Cursor, before: float, limit: int) -> list[Attachment]:
    cur.execute(f"SELECT {_COLS} FROM attachments WHERE claimed_at IS NULL AND created_at < ? "
                f"ORDER BY created_at, id LIMIT ?", (before, limit))
    return [_row(r) for r in cur.fetchall()]


def _delete_txn(cur: Cursor, attachment_id: str) -> list[str]:
    gone = _get_txn(cur, attachment_id)
    if gone is None:
        return []
    cur.execute("DELETE FROM attachments WHERE id = ? AND claim IS NULL", (attachment_id,))
    if cur.rowcount != 1:
        return []
    out = []
    for key in (gone.blob_key, gone.thumb_key):
        if key is None:
            continue
        cur.execute("SELECT 1 FROM attachments WHERE blob_key = ? OR thumb_key = ?", (key, key))
        if cur.fetchone() is None:
            out.append(key)
    return out


class SqlAttachmentStore:
    """``attachments`` through ``Database.run_interaction``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, attachment: Attachment) -> "Deferred[None]":
        return self._db.run_interaction("attachment_add", _add_txn, attachment)

    def get(self, attachment_id: str) -> "Deferred[Attachment | None]":
        return self._db.run_interaction("attachment_get", _get_txn, attachment_id)

    def claim(self, ids: list[str], uploader: str, claim: str, conversation_id: str, now: float,
              per_conversation: int) -> "Deferred[list[Attachment]]":
        return self._db.run_interaction("attachment_claim", _claim_txn, list(ids), uploader, claim, conversation_id,
                                        now, per_conversation)

    def bytes_since(self, uploader: str, since: float) -> "Deferred[int]":
        return self._db.run_interaction("attachment_bytes", _bytes_since_txn, uploader, since)

    def orphans(self, before: float, limit: int) -> "Deferred[list[Attachment]]":
        return self._db.run_interaction("attachment_orphans", _orphans_txn, before, limit)

    def delete(self, attachment_id: str) -> "Deferred[list[str]]":
        return self._db.run_interaction("attachment_delete", _delete_txn, attachment_id)
