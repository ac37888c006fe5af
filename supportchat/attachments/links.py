"""Signed, short-lived download links, minted for each response that shows
an attachment (deliveries, ``sync``, REST history, the upload's answer) and
never stored.

A link is ``/api/v1/attachments/{id}`` (or ``.../{id}/thumbnail``) with
``exp`` (Unix seconds, rounded up to the minute so that links minted close
together are the same URL and the browser's cache works) and ``sig``: the
first 16 bytes of HMAC-SHA256 over ``variant, id, exp`` with a key derived
from the server's secret, base64url. Whoever holds the link may fetch that
one variant of that one attachment until ``exp``; after it, or with any
byte changed, the answer is 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from typing import Any, Callable
from urllib.parse import quote

PATH = "/api/v1/attachments/"
VARIANTS = ("file", "thumbnail")


class LinkSigner:
    """Mints and checks attachment links; ``now`` is the injected clock's
    ``seconds``; ``base`` (the public URL, or empty for a path) prefixes them."""

    def __init__(self, secret: str, ttl: float, now: Callable[[], float], base: str = "") -> None:
        self._key = hmac.new(secret.encode("utf-8"), b"supportchat attachment links v1", hashlib.sha256).digest()
        self.ttl = ttl
        self._now = now
        self._base = base.rstrip("/")

    def now(self) -> float:
        return self._now()

    def _sig(self, variant: str, attachment_id: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{variant}\n{attachment_id}\n{exp}".encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode("ascii")

    def url(self, attachment_id: str, variant: str = "file") -> str:
        exp = int(math.ceil((self._now() + self.ttl) / 60.0) * 60)
        path = PATH + quote(attachment_id, safe="") + ("/thumbnail" if variant == "thumbnail" else "")
        return f"{self._base}{path}?exp={exp}&sig={self._sig(variant, attachment_id, exp)}"

    def check(self, attachment_id: str, variant: str, exp: str, sig: str) -> bool | None:
        """True: valid; False: tampered; None: expired (a valid signature
        whose time is up)."""
        if not exp.isdigit() or len(exp) > 12:
            return False
        expected = self._sig(variant, attachment_id, int(exp))
        if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii", "replace")):
            return False
        return True if int(exp) > self._now() else None

    def attachment(self, data: dict[str, Any]) -> dict[str, Any]:
        """The wire form of an attachment a message stores, with fresh links."""
        out = {k: data.get(k) for k in ("id", "name", "content_type", "size", "width", "height")}
        out["url"] = self.url(str(data["id"]))
        out["thumbnail_url"] = self.url(str(data["id"]), "thumbnail") if data.get("thumbnail") else None
        return out

    def decorate(self, frame: dict[str, Any]) -> dict[str, Any]:
        """``frame`` (a message's wire form) with links minted for each of
        its attachments; the same dict when it has none."""
        attachments = frame.get("attachments")
        if not attachments:
            return frame
        return dict(frame, attachments=[self.attachment(a) for a in attachments])
