"""REST for canned responses (supportchat/workflow/canned.py).

    GET    /api/v1/canned[?shortcut=prefix]  agents: their team's and their own; admins: every team's and their own
    POST   /api/v1/canned                    {scope, team?, shortcut, title?, body}: agents create personal
                                             ones, admins team ones (and their own personal ones)
    PATCH  /api/v1/canned/{id}               {shortcut?, title?, body?}: the owner of a personal one; admins for team ones
    DELETE /api/v1/canned/{id}               as PATCH

Someone else's personal response, or another team's for an agent, is 404;
an agent changing their team's response is 403. Bodies are never logged.
Every change is told to the consoles that see the response (``canned``
frame, ``StaffNotices.canned_changed``), which list them again.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Awaitable, Callable

from twisted.web.http import Request

from supportchat.auth import Principal
from supportchat.http.authn import Authenticator
from supportchat.http.history import HttpError, str_arg
from supportchat.http.workflow_api import ID_RE, WorkflowResource, _path, read_json
from supportchat.workflow.canned import PERSONAL, SCOPES, TEAM, Canned, CannedStore
from supportchat.workflow.models import WorkflowError
from supportchat.workflow.store import WorkflowStore

SHORTCUT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_TEXT = 4000


def _fields(data: dict[str, Any], creating: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    if "shortcut" in data or creating:
        shortcut = data.get("shortcut")
        if not isinstance(shortcut, str) or not SHORTCUT_RE.match(shortcut.lower()):
            raise HttpError(400, "bad_request", "shortcut must be 1-32 letters, digits, _ or - (starting with a "
                            "letter or digit)")
        out["shortcut"] = shortcut.lower()
    if "title" in data:
        if not isinstance(data["title"], str) or len(data["title"]) > 200:
            raise HttpError(400, "bad_request", "title must be at most 200 characters")
        out["title"] = data["title"]
    if "body" in data or creating:
        body = data.get("body")
        if not isinstance(body, str) or not 1 <= len(body) <= MAX_TEXT or not body.strip():
            raise HttpError(400, "bad_request", f"body must be 1-{MAX_TEXT} characters")
        out["body"] = body
    return out


class CannedApi(WorkflowResource):
    """``/api/v1/canned[/{id}]``."""

    routes = {b"GET": "get", b"POST": "post", b"PATCH": "patch", b"DELETE": "delete"}

    def __init__(self, reactor: Any, authn: Authenticator, workflow: WorkflowStore, canned: CannedStore,
                 on_change: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        super().__init__(reactor, authn, workflow)
        self._canned = canned
        self._on_change = on_change  # (scope, owner): tells the consoles that see it (StaffNotices)

    async def _changed(self, canned: Canned) -> None:
        if self._on_change is not None:
            await self._on_change(canned.scope, canned.owner)

    async def _team(self, principal: Principal) -> str:
        agent = await self._wf.get_agent(principal.user_id)
        return agent.team_id if agent is not None else ""

    async def get(self, request: Request) -> tuple[int, Any]:
        principal = await self.principal(request)
        path = _path(request)
        if path:
            return 200, (await self._mine(principal, path, write=False)).to_wire()
        teams = None if principal.role == "admin" else [await self._team(principal)]
        team_arg = str_arg(request, "team")
        if team_arg is not None:
            if principal.role != "admin" and teams != [team_arg]:
                raise HttpError(403, "forbidden", "agents see their own team's responses")
            teams = [team_arg]
        prefix = (str_arg(request, "shortcut") or "").lower()
        found = [c.to_wire() for c in await self._canned.visible(teams, principal.user_id)
                 if c.shortcut.startswith(prefix)]
        return 200, {"canned": found}

    async def post(self, request: Request) -> tuple[int, Any]:
        principal = await self.principal(request)
        if _path(request):
            raise HttpError(404, "not_found", "no such resource")
        data = read_json(request)
        scope = data.get("scope", PERSONAL)
        if scope not in SCOPES:
            raise HttpError(400, "bad_request", "scope must be team or personal")
        if scope == TEAM:
            if principal.role != "admin":
                raise HttpError(403, "forbidden", "team responses are managed by admins")
            owner = data.get("team", "")
            if not isinstance(owner, str) or (owner and not ID_RE.match(owner)):
                raise HttpError(400, "bad_request", "team must be a team id ('' for the default team)")
            if owner and owner not in {t.id for t in await self._wf.list_teams()}:
                raise HttpError(400, "bad_request", "no such team")
        else:
            owner = principal.user_id
        fields = _fields(data, creating=True)
        now = self._reactor.seconds()
        canned = Canned(uuid.uuid4().hex, scope, owner, fields["shortcut"], fields.get("title", ""), fields["body"],
                        principal.user_id, now, now)
        try:
            created = await self._canned.create(canned)
        except WorkflowError as e:
            raise HttpError(409, "conflict", str(e)) from None
        await self._changed(created)
        return 201, created.to_wire()

    async def _mine(self, principal: Principal, path: list[str], write: bool) -> Canned:
        """The response at ``path`` if the principal may see it (and, for
        ``write``, change it)."""
        canned = await self._canned.get(path[0]) if len(path) == 1 else None
        if canned is None:
            raise HttpError(404, "not_found", "no such canned response")
        if canned.scope == PERSONAL:
            if canned.owner != principal.user_id:
                raise HttpError(404, "not_found", "no such canned response")
            return canned
        if principal.role == "admin":
            return canned
        if canned.owner != await self._team(principal):
            raise HttpError(404, "not_found", "no such canned response")
        if write:
            raise HttpError(403, "forbidden", "team responses are managed by admins")
        return canned

    async def patch(self, request: Request) -> tuple[int, Any]:
        principal = await self.principal(request)
        canned = await self._mine(principal, _path(request), write=True)
        changes = _fields(read_json(request), creating=False)
        try:
            updated = await self._canned.update(canned.id, changes, self._reactor.seconds())
        except WorkflowError as e:
            raise HttpError(409, "conflict", str(e)) from None
        if updated is None:
            raise HttpError(404, "not_found", "no such canned response")
        await self._changed(updated)
        return 200, updated.to_wire()

    async def delete(self, request: Request) -> tuple[int, Any]:
        principal = await self.principal(request)
        canned = await self._mine(principal, _path(request), write=True)
        if not await self._canned.delete(canned.id):
            raise HttpError(404, "not_found", "no such canned response")
        await self._changed(canned)
        return 200, {"deleted": canned.id}
