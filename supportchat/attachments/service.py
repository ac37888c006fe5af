"""The attachment service: what the REST routes and the chat handler call.

- ``upload``: per-user rate and daily bytes, then the whole upload on the
  worker pool (``upload.process_upload``), then the bytes into the
  ``BlobStore`` and the row into the ``AttachmentStore``.
- ``claim``: a message takes its attachments (``store.py``); what the
  message stores about them.
- ``open``: the bytes of one attachment (or its thumbnail) for a
  download, after the signature or the bearer's rights are checked.
- ``sweep``: uploads no message claimed within ``orphan_grace`` go, with
  their bytes once no other row holds them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from supportchat.attachments.blobs import BlobStore, RunInPool
from supportchat.attachments.links import LinkSigner
from supportchat.attachments.models import MAX_PER_MESSAGE, Attachment, AttachmentError, Limits
from supportchat.attachments.scan import Scanner
from supportchat.attachments.store import AttachmentStore
from supportchat.attachments.upload import Spooled, _remove, boundary_of, process_upload
from supportchat.ratelimit import KeyedRateLimiter
from supportchat.storage.models import new_id

if TYPE_CHECKING:
    from supportchat.auth import Principal
    from supportchat.metrics import Metrics

log = Logger()

DAY = 86400.0
STAFF = ("agent", "admin")


@dataclass(frozen=True)
class Policy:
    """The per-user and per-conversation limits and the scanner choice."""

    upload_rate: float = 0.5
    upload_burst: int = 10
    daily_bytes: int = 200 * 1024 * 1024
    per_conversation: int = 200
    orphan_grace: float = DAY
    accept_unscanned: bool = False


# May this principal key read this conversation? (participant, admin)
CanRead = Callable[[str, str, str], Awaitable[bool]]


class ThreadPoolService(Service):
    """Starts and stops the attachment worker pool with the node."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class AttachmentService:
    def __init__(self, clock: IReactorTime, store: AttachmentStore, blobs: BlobStore, run: RunInPool,
                 spool_dir: str, limits: Limits, scanner: Scanner | None, links: LinkSigner, metrics: Metrics,
                 can_read: CanRead, policy: Policy = Policy()) -> None:
        self._clock = clock
        self.store = store
        self.blobs = blobs
        self._run = run
        self._spool_dir = spool_dir
        self.limits = limits
        self._scanner = scanner
        self.links = links
        self._metrics = metrics
        self._can_read = can_read
        self.policy = policy
        self._rate = KeyedRateLimiter(clock, policy.upload_rate, policy.upload_burst)
        # Storing a blob and its row, and the sweep deleting a row and then
        # its blob, exclude each other on this node: otherwise an upload of
        # the same bytes as an orphan being swept could find the blob still
        # there, skip writing it, and lose it to the sweep a moment later.
        self._blob_lock = DeferredLock()

    # -- upload ------------------------------------------------------------
    async def upload(self, principal: Principal, body: IO[bytes], content_type: bytes | None) -> dict[str, Any]:
        """Store one upload; the 201 body (with links for the uploader's
        preview), or AttachmentError."""
        try:
            out = await self._upload(principal, body, content_type)
        except AttachmentError as e:
            self._metrics.attachment_uploads.labels(e.code).inc()
            raise
        self._metrics.attachment_uploads.labels("stored").inc()
        return out

    async def _upload(self, principal: Principal, body: IO[bytes], content_type: bytes | None) -> dict[str, Any]:
        key = principal.key
        if not self._rate.allow(key):
            raise AttachmentError(429, "rate_limited", "too many uploads; slow down",
                                  retry_after=max(1.0, 1.0 / self.policy.upload_rate))
        now = self._clock.seconds()
        used = await self.store.bytes_since(key, now - DAY)
        if used >= self.policy.daily_bytes:
            raise AttachmentError(429, "quota_exceeded",
                                  f"at most {self.policy.daily_bytes} bytes may be uploaded in 24 hours",
                                  retry_after=3600)
        boundary = boundary_of(content_type)
        try:
            spooled: Spooled = await self._run(process_upload, body, boundary, self.limits, self._spool_dir,
                                               self._scanner, self.policy.accept_unscanned, time.perf_counter)
        except AttachmentError as e:
            if self._scanner is not None and e.code in ("infected", "scanner_unavailable"):
                self._metrics.attachment_scans.labels("infected" if e.code == "infected" else "unavailable").inc()
            if e.code == "infected":
                log.warn("upload refused by the virus scanner (user {user})", user=principal.user_id)
            raise
        if self._scanner is not None:
            self._metrics.attachment_scans.labels(spooled.scan).inc()
        if spooled.thumb_path is not None:
            self._metrics.attachment_image_seconds.observe(spooled.image_seconds)
        try:
            conversation = spooled.fields.get("conversation") or None
            if conversation is not None and not await self._can_read(conversation, key, principal.role):
                raise AttachmentError(404, "not_found", "no such conversation")
            attachment = Attachment(
                id=new_id("a", now), uploader=key, name=spooled.name, content_type=spooled.content_type,
                size=spooled.size, sha256=spooled.sha256, width=spooled.width, height=spooled.height,
                blob_key=spooled.sha256, thumb_key=None if spooled.thumb_path is None else spooled.sha256 + ".thumb",
                thumb_type=spooled.thumb_type, scan=spooled.scan if self._scanner is not None else "unscanned",
                created_at=now, conversation_id=conversation,
            )
            await self._blob_lock.acquire()
            try:
                # The blob before its row: a row never points at bytes not yet stored.
                await self.blobs.put(attachment.blob_key, spooled.path)
                if attachment.thumb_key is not None and spooled.thumb_path is not None:
                    await self.blobs.put(attachment.thumb_key, spooled.thumb_path)
                await self.store.add(attachment)
            finally:
                self._blob_lock.release()
        except BaseException:
            _remove(spooled.path, spooled.thumb_path)
            raise
        self._metrics.attachment_bytes.inc(attachment.size)
        out = attachment.to_upload_wire()
        out.update(self.links.attachment(attachment.to_message_data()))
        if conversation is not None:
            out["conversation"] = conversation
        return out

    # -- messages ------------------------------------------------------------
    async def claim(self, sender_key: str, conversation_id: str, client_msg_id: str,
                    ids: tuple[str, ...]) -> list[dict[str, Any]]:
        """The message data of ``ids`` once claimed by this message
        (NotFound, TooManyAttachments from the store)."""
        assert 0 < len(ids) <= MAX_PER_MESSAGE
        claim = f"{sender_key}\n{client_msg_id}"
        claimed = await self.store.claim(list(ids), sender_key, claim, conversation_id, self._clock.seconds(),
                                         self.policy.per_conversation)
        return [a.to_message_data() for a in claimed]

    # -- downloads -----------------------------------------------------------------
    async def find_signed(self, attachment_id: str, variant: str, exp: str, sig: str) -> Attachment:
        """The attachment a link names: 403 expired or tampered, 404 gone."""
        valid = self.links.check(attachment_id, variant, exp, sig)
        if valid is None:
            raise AttachmentError(403, "expired", "this link has expired; fetch the message again for a new one")
        if not valid:
            raise AttachmentError(403, "forbidden", "this link is not valid")
        attachment = await self.store.get(attachment_id)
        if attachment is None or not attachment.uploader:  # gone, or retired by erase or retention
            raise AttachmentError(404, "not_found", "no such attachment")
        return attachment

    async def find_for(self, attachment_id: str, principal: Principal) -> Attachment:
        """The attachment if ``principal`` may read it: its uploader; once a
        message carries it, the conversation's participants and staff.
        Anyone else (and a missing id): 404."""
        attachment = await self.store.get(attachment_id)
        if attachment is not None:
            if attachment.uploader == principal.key:
                return attachment
            if attachment.claim is not None and attachment.conversation_id is not None:
                if principal.role in STAFF:
                    return attachment
                if await self._can_read(attachment.conversation_id, principal.key, principal.role):
                    return attachment
        raise AttachmentError(404, "not_found", "no such attachment")

    async def open(self, attachment: Attachment, variant: str) -> tuple[IO[bytes], int, str]:
        """(file, size, content type) of the stored bytes or the thumbnail."""
        key, content_type = attachment.blob_key, attachment.content_type
        if variant == "thumbnail":
            if attachment.thumb_key is None or attachment.thumb_type is None:
                raise AttachmentError(404, "not_found", "this attachment has no thumbnail")
            key, content_type = attachment.thumb_key, attachment.thumb_type
        opened = await self.blobs.open(key)
        if opened is None:
            raise AttachmentError(404, "not_found", "no such attachment")
        return opened[0], opened[1], content_type

    # -- upkeep ------------------------------------------------------------------
    async def sweep(self, batch: int = 500) -> int:
        """Remove uploads no message claimed within ``orphan_grace``; how many."""
        before = self._clock.seconds() - self.policy.orphan_grace
        removed = 0
        for attachment in await self.store.orphans(before, batch):
            await self._blob_lock.acquire()
            try:
                for key in await self.store.delete(attachment.id):
                    await self.blobs.delete(key)
            finally:
                self._blob_lock.release()
            removed += 1
        if removed:
            log.info("removed {n} unclaimed uploads", n=removed)
        return removed
