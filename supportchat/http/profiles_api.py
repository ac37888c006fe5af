"""REST for customer profiles (supportchat/workflow/profiles.py).

    GET /api/v1/customers?phone=...          agents, admins: profiles with this phone (blind index)
    GET /api/v1/customers/{id}/profile       the customer themself and admins: plain; agents: sensitive
                                             fields masked unless [profile] show_sensitive_to_agents;
                                             ?missing=null: 200 null instead of 404 for a customer the
                                             caller may read who has no profile (the console asks so,
                                             and a browser logs no failed request)
    PUT /api/v1/customers/{id}/profile       admins (accounts or integrator tokens with role admin):
                                             replace {name?, email?, phone?, attributes?}

Rule for agents: an agent reads the profile (masked) of a customer who has
a conversation in the agent's team's inbox (any state) or assigned to the
agent: the customers they serve, as the inbox shows them; any other
profile is 404, and a phone search lists only those customers. Admins read
every profile. Another customer's profile is 404 for a customer. A key problem (no keyring, unknown key id, a value that does not
authenticate) is 500 ``unavailable``; the log line names the customer and
the reason, never the value.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.logger import Logger
from twisted.web.http import Request

from supportchat.auth import Principal
from supportchat.http.authn import Authenticator
from supportchat.http.history import HttpError, str_arg
from supportchat.http.workflow_api import WorkflowResource, _path, read_json
from supportchat.storage.models import customer_key
from supportchat.keyring import ProfileKeyError
from supportchat.workflow.profiles import ProfileInvalid, ProfileService, validate
from supportchat.workflow.store import WorkflowStore

log = Logger()


def customer_id_ok(customer_id: str) -> bool:
    return 1 <= len(customer_id) <= 128 and customer_id.isprintable()


class CustomersApi(WorkflowResource):
    """``/api/v1/customers`` and ``/api/v1/customers/{id}/profile``."""

    routes = {b"GET": "get", b"PUT": "put"}

    def __init__(self, reactor: Any, authn: Authenticator, workflow: WorkflowStore,
                 profiles: ProfileService, on_change: Callable[[str], Awaitable[None]] | None = None) -> None:
        super().__init__(reactor, authn, workflow)
        self._profiles = profiles
        self._on_change = on_change

    def _target(self, request: Request) -> str:
        path = _path(request)
        if len(path) != 2 or path[1] != "profile" or not customer_id_ok(path[0]):
            raise HttpError(404, "not_found", "no such resource")
        return path[0]

    def _unavailable(self, e: ProfileKeyError, customer: str) -> HttpError:
        log.error("customer profile unavailable for {customer}: {reason}", customer=customer, reason=str(e))
        return HttpError(500, "unavailable", str(e))

    async def _served(self, principal: Principal, customers: list[str]) -> set[str]:
        """Those of ``customers`` whose profile this principal may read
        (agents: the customers of their team's inbox and of their own
        conversations; the agent's account is read once)."""
        if principal.role != "agent":
            return set(customers)
        me = await self._wf.get_agent(principal.user_id)
        team = me.team_id if me is not None else ""
        return {c for c in customers if await self._wf.serves_customer(customer_key(c), team, principal.user_id)}

    def _reveal(self, principal: Principal) -> bool:
        return principal.role != "agent" or self._profiles.show_sensitive_to_agents

    async def get(self, request: Request) -> tuple[int, Any]:
        if not _path(request):
            return await self._search(request)
        customer = self._target(request)
        principal = await self.principal(request, ("customer", "agent", "admin"))
        if principal.role == "customer" and principal.user_id != customer:
            raise HttpError(404, "not_found", "no such profile")
        profile = await self._profiles.store.get(customer)
        if not await self._served(principal, [customer]):
            raise HttpError(404, "not_found", "no such profile")
        if profile is None:
            if str_arg(request, "missing") == "null":
                return 200, None
            raise HttpError(404, "not_found", "no such profile")
        try:
            return 200, self._profiles.view(profile, self._reveal(principal))
        except ProfileKeyError as e:
            raise self._unavailable(e, customer) from None

    async def _search(self, request: Request) -> tuple[int, Any]:
        principal = await self.principal(request)
        phone = str_arg(request, "phone")
        if not phone:
            raise HttpError(400, "bad_request", "phone is required")
        try:
            validate({"phone": phone})
        except ProfileInvalid as e:
            raise HttpError(400, "bad_request", str(e)) from None
        try:
            matches = await self._profiles.find_by_phone(phone)
            served = await self._served(principal, [p.customer_id for p in matches])
            found = [p for p in matches if p.customer_id in served]
            return 200, {"customers": [self._profiles.view(p, self._reveal(principal)) for p in found]}
        except ProfileKeyError as e:
            raise self._unavailable(e, "(phone search)") from None

    async def put(self, request: Request) -> tuple[int, Any]:
        customer = self._target(request)
        principal = await self.principal(request, ("admin",))
        try:
            fields = validate(read_json(request))
        except ProfileInvalid as e:
            raise HttpError(400, "bad_request", str(e)) from None
        try:
            profile = await self._profiles.put(customer, fields, self._reactor.seconds())
            view = self._profiles.view(profile, self._reveal(principal))
        except ProfileKeyError as e:
            raise self._unavailable(e, customer) from None
        if self._on_change is not None:
            await self._on_change(customer)
        return 200, view


def claim_upserter(profiles: ProfileService, clock: Any) -> Any:
    """The WebSocket-open hook: merge a customer token's ``profile`` claim
    into the stored profile. Problems are logged (without values)."""

    async def upsert(principal: Principal) -> None:
        try:
            fields = validate(principal.profile or {})
            await profiles.put(principal.user_id, fields, clock.seconds(), merge=True)
        except (ProfileInvalid, ProfileKeyError) as e:
            log.warn("profile claim of {customer} not stored: {reason}", customer=principal.user_id, reason=str(e))

    return upsert
