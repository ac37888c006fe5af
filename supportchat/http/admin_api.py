"""Admin REST: per-customer export and erase (privacy requests).

    GET    /api/v1/admin/customers/{id}/export   -> everything stored about them (JSON):
                                                    conversations, workflow, notes, profile, uploads
                                                    (with signed links to their bytes)
    DELETE /api/v1/admin/customers/{id}          -> erase it all (profile included), in small batches

Admin tokens only (403 forbidden for any other role).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import Request

from supportchat.http.authn import Authenticator
from supportchat.http.history import AsyncJsonResource, HttpError, authenticate, path_segments
from supportchat.storage.history import repeat_batches
from supportchat.storage.interfaces import HistoryStore
from supportchat.storage.models import customer_key
from supportchat.workflow.profiles import ProfileService


async def customer_export(history: HistoryStore, profiles: ProfileService | None, customer: str) -> dict[str, Any]:
    """Everything stored about a customer: conversations with messages,
    participants and workflow (rating, notes), and their profile."""
    data = await history.export_customer(customer_key(customer))
    data["profile"] = await profiles.export(customer) if profiles is not None else None
    return data


class AdminApi(AsyncJsonResource):
    """``/api/v1/admin/customers/...``."""

    routes = {b"GET": "get", b"DELETE": "delete"}

    def __init__(self, clock: IReactorTime, authn: Authenticator, history: HistoryStore, batch: int,
                 profiles: ProfileService | None = None,
                 attachment_link: Callable[[str], str] | None = None,
                 after_erase: Callable[[], Awaitable[Any]] | None = None) -> None:
        """``attachment_link`` mints a signed download link for an upload
        (the export's ``attachments[].url``); ``after_erase`` runs once an
        erase is done (the attachment sweep: the bytes go at once)."""
        super().__init__()
        self._attachment_link = attachment_link
        self._after_erase = after_erase
        self._clock = clock
        self._authn = authn
        self._history = history
        self._batch = batch
        self._profiles = profiles

    async def _customer(self, request: Request, suffix: list[str]) -> str:
        principal = await authenticate(request, self._authn)
        if principal.role != "admin":
            raise HttpError(403, "forbidden", "only admins may export or erase customer data")
        path = path_segments(request)
        if len(path) != 2 + len(suffix) or path[0] != "customers" or not path[1] or path[2:] != suffix:
            raise HttpError(404, "not_found", "no such resource")
        return path[1]

    async def get(self, request: Request) -> tuple[int, Any]:
        customer = await self._customer(request, ["export"])
        data = await customer_export(self._history, self._profiles, customer)
        data["exported_at"] = self._clock.seconds()
        if self._attachment_link is not None:
            for upload in data.get("attachments") or []:
                upload["url"] = self._attachment_link(str(upload["id"]))
        return 200, data

    async def delete(self, request: Request) -> tuple[int, Any]:
        customer = await self._customer(request, [])
        key = customer_key(customer)
        deleted = await repeat_batches(
            lambda: self._history.erase_customer_batch(key, self._batch, self._clock.seconds()), self._clock)
        if self._after_erase is not None:
            await self._after_erase()
        return 200, {"customer_id": customer, "erased": True, "deleted_rows": deleted}
