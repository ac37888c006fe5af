"""Attachment metadata, the errors of the attachment API, and its limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What the default allow-list accepts, by sniffed type.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
ALL_TYPES = IMAGE_TYPES + ("application/pdf", "text/plain")
MAX_PER_MESSAGE = 10
MAX_NAME_CHARS = 200


class AttachmentError(Exception):
    """An upload or download refused: an HTTP status, a protocol error code
    and a message for people (never the file's content)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    """What one upload may be (``[attachments]``)."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 24_000_000
    max_frames: int = 200
    allowed_types: tuple[str, ...] = ALL_TYPES
    thumbnail_size: int = 320


@dataclass(frozen=True)
class Attachment:
    """One stored upload. ``size`` and ``sha256`` are of the stored bytes
    (after re-encoding, for images). ``claim`` is set once, by the message
    that carries it (its sender's key and ``client_msg_id``), and
    ``conversation_id`` with it (or at upload, when the uploader named one)."""

    id: str
    uploader: str  # the uploader's principal key
    name: str
    content_type: str
    size: int
    sha256: str
    width: int | None
    height: int | None
    blob_key: str
    thumb_key: str | None
    thumb_type: str | None
    scan: str  # clean, unscanned (no scanner), unavailable (scanner down, accepted and flagged)
    created_at: float
    conversation_id: str | None = None
    claim: str | None = None
    claimed_at: float | None = None

    def to_upload_wire(self) -> dict[str, Any]:
        """The 201 answer of ``POST /api/v1/attachments`` (without links)."""
        return {
            "id": self.id, "name": self.name, "content_type": self.content_type, "size": self.size,
            "sha256": self.sha256, "width": self.width, "height": self.height,
        }

    def to_message_data(self) -> dict[str, Any]:
        """What a message stores about it (no links: those are minted per
        response, ``links.py``); ``thumbnail`` says whether one exists."""
        return {
            "id": self.id, "name": self.name, "content_type": self.content_type, "size": self.size,
            "width": self.width, "height": self.height, "thumbnail": self.thumb_key is not None,
        }
