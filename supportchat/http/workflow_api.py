"""REST for the agent console and integrators: login, agents, teams, the
inbox (conversations in the workflow) and the CSAT report.

    POST  /api/v1/login                {login, password} -> access + refresh token
    POST  /api/v1/refresh              {refresh_token}   -> a new pair (one use)
    GET   /api/v1/agents               agents, admins
    POST  /api/v1/agents               admins: create
    GET   /api/v1/agents/{id}          admins, or the agent themself
    PATCH /api/v1/agents/{id}          admins: name, team, capacity, role, password, disabled
    GET   /api/v1/teams                agents, admins
    POST  /api/v1/teams                admins: create {id, name}
    PATCH /api/v1/teams/{id}           admins: rename
    GET   /api/v1/inbox?state=&agent=&team=&waiting_min=&limit=   agents (own team), admins
    GET   /api/v1/inbox/{conversation} detail with internal notes
    GET   /api/v1/csat?since=          admins: ratings report

Errors are ``{"error": {"code", "message"}}``; customers get 403, a
disabled account, revoked token or changed role 401 (``supportchat.http.authn``).
Passwords and tokens are never logged.

Login is throttled per login and per client address (429 with
``Retry-After`` after repeated failures, exponential backoff, reset on
success); unknown logins cost the same scrypt work as real ones; scrypt
runs through the bounded ``PasswordHasher`` (503 with ``Retry-After`` when
its queue is full). The limits are ``[auth] login_*`` and
``password_hash_*`` (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import Request

from supportchat.auth import Principal, TokenIssuer
from supportchat.http.authn import Authenticator
from supportchat.config.model import AuthConfig, WorkflowConfig
from supportchat.http.common import client_ip
from supportchat.http.history import MAX_INT, AsyncJsonResource, HttpError, authenticate, int_arg, path_segments, str_arg
from supportchat.storage.interfaces import HistoryStore
from supportchat.storage.models import EVENT, TEXT
from supportchat.wire.frames import text_problem
from supportchat.workflow.models import STATUSES, Agent, WorkflowError
from supportchat.ratelimit import FailureBackoff
from supportchat.workflow.passwords import HasherBusy, PasswordHasher
from supportchat.workflow.store import WorkflowStore

ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MAX_BODY = 16 * 1024
MAX_LOGIN_CHARS = 256
# JSON bodies nest at most this deep (profile attributes are the deepest: 2).
MAX_JSON_DEPTH = 32


def read_json(request: Request) -> dict[str, Any]:
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise HttpError(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: nested too deep for the parser
        raise HttpError(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise HttpError(400, "bad_request", "the body must be a JSON object")
    problem = json_problem(data)
    if problem is not None:
        raise HttpError(400, "bad_request", problem)
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_problem(data: Any) -> str | None:
    """Why a parsed body cannot be used, or None: nested deeper than
    MAX_JSON_DEPTH, an integer beyond 64 bits, or a string (key or value)
    that is not valid Unicode or holds a NUL. Names the top-level field."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, field = stack.pop()
        where = f"'{field}'" if field else "the body"
        if depth > MAX_JSON_DEPTH:
            return f"{where} is nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                return f"{where} {problem}"
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -MAX_INT - 1 <= value <= MAX_INT:
                return f"{where} holds an integer beyond 64 bits"
        elif isinstance(value, dict):
            for key, item in value.items():
                name = field or key
                problem = text_problem(key)
                if problem is not None:
                    return f"a key in {where} {problem}" if field else f"a key of the body {problem}"
                stack.append((item, depth + 1, name))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, field) for item in value)
    return None


def _path(request: Request) -> list[str]:
    return [p for p in path_segments(request) if p]


class WorkflowResource(AsyncJsonResource):
    """Shared: the one authentication path (token and account), then the role."""

    def __init__(self, reactor: Any, authn: Authenticator, workflow: WorkflowStore) -> None:
        super().__init__()
        self._reactor = reactor
        self._authn = authn
        self._wf = workflow

    async def principal(self, request: Request, roles: tuple[str, ...] = ("agent", "admin")) -> Principal:
        principal = await authenticate(request, self._authn)
        if principal.role not in roles:
            raise HttpError(403, "forbidden", f"this needs the role {' or '.join(roles)}")
        return principal


class LoginThrottle:
    """Backoff after failed logins, per login (any login, existing or not,
    so the answers do not tell which exist) and per client address."""

    def __init__(self, clock: IReactorTime, config: AuthConfig) -> None:
        limits = (config.login_backoff_initial, config.login_backoff_max, config.login_forget_after)
        self.logins = FailureBackoff(clock, config.login_free_failures, *limits)
        self.addresses = FailureBackoff(clock, config.login_free_failures_per_address, *limits)

    def check(self, login: str, address: str) -> None:
        """HttpError 429 while the login or the address must wait."""
        wait = max(self.logins.retry_after(login), self.addresses.retry_after(address))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HttpError(429, "rate_limited", f"too many failed sign-ins; retry in {seconds} seconds",
                            {"retry-after": str(seconds)})

    def failed(self, login: str, address: str) -> None:
        self.logins.failed(login)
        self.addresses.failed(address)

    def succeeded(self, login: str, address: str) -> None:
        self.logins.succeeded(login)
        self.addresses.succeeded(address)


class LoginApi(WorkflowResource):
    """``POST /api/v1/login`` and ``POST /api/v1/refresh``."""

    routes = {b"POST": "post"}

    def __init__(self, reactor: Any, authn: Authenticator, workflow: WorkflowStore, issuer: TokenIssuer,
                 config: WorkflowConfig, hasher: PasswordHasher, throttle: LoginThrottle | None = None,
                 refresh: bool = False) -> None:
        super().__init__(reactor, authn, workflow)
        self._issuer = issuer
        self._config = config
        self._hasher = hasher
        self._throttle = throttle
        self._refresh = refresh

    async def post(self, request: Request) -> tuple[int, Any]:
        if _path(request):
            raise HttpError(404, "not_found", "no such resource")
        data = read_json(request)
        now = self._reactor.seconds()
        if self._refresh:
            token = data.get("refresh_token")
            if not isinstance(token, str) or not token:
                raise HttpError(400, "bad_request", "refresh_token is required")
            agent_id = await self._wf.use_refresh(hashlib.sha256(token.encode()).hexdigest(), now)
            agent = None if agent_id is None else await self._wf.get_agent(agent_id)
            if agent is None or agent.disabled:
                raise HttpError(401, "unauthorized", "the refresh token is invalid, used or expired")
        else:
            agent = await self._login(request, data)
        return 200, await self._tokens(agent, now)

    async def _login(self, request: Request, data: dict[str, Any]) -> Agent:
        """The account whose password this is: throttled, and the same
        scrypt work whether the login exists, has no password, or not."""
        login, password = data.get("login"), data.get("password")
        if not isinstance(login, str) or not isinstance(password, str) or not login or not password:
            raise HttpError(400, "bad_request", "login and password are required")
        if len(login) > MAX_LOGIN_CHARS:
            raise HttpError(400, "bad_request", f"login must be at most {MAX_LOGIN_CHARS} characters")
        key, address = login.casefold(), client_ip(request)
        if self._throttle is not None:
            self._throttle.check(key, address)
        agent = await self._wf.get_agent_by_login(login)
        try:
            ok = await self._hasher.verify(password, agent.password_hash if agent is not None else None)
        except HasherBusy as e:
            raise HttpError(503, "unavailable", f"too many sign-ins are being checked; retry in {e.retry_after} "
                            "seconds", {"retry-after": str(e.retry_after)}) from None
        if agent is None or not ok or agent.disabled:
            if self._throttle is not None:
                self._throttle.failed(key, address)
            raise HttpError(401, "unauthorized", "wrong login or password, or the account is disabled")
        if self._throttle is not None:
            self._throttle.succeeded(key, address)
        return agent

    async def _tokens(self, agent: Agent, now: float) -> dict[str, Any]:
        access = self._issuer.mint(agent.id, agent.role, self._config.access_token_ttl, now, agent.name)
        refresh = secrets.token_urlsafe(32)
        await self._wf.save_refresh(hashlib.sha256(refresh.encode()).hexdigest(), agent.id,
                                    now + self._config.refresh_token_ttl)
        return {"access_token": access, "token_type": "Bearer", "expires_in": self._config.access_token_ttl,
                "refresh_token": refresh, "agent": agent.to_wire()}


class AgentsApi(WorkflowResource):
    """``/api/v1/agents[/{id}]``."""

    routes = {b"GET": "get", b"POST": "post", b"PATCH": "patch"}

    def __init__(self, reactor: Any, authn: Authenticator, workflow: WorkflowStore, config: WorkflowConfig,
                 on_change: Callable[[Agent, list[str]], Any], hasher: PasswordHasher) -> None:
        super().__init__(reactor, authn, workflow)
        self._config = config
        self._on_change = on_change
        self._hasher = hasher

    async def _hash(self, password: Any) -> str:
        if not isinstance(password, str) or len(password) < 8 or len(password) > 1024:
            raise HttpError(400, "bad_request", "password must be 8 to 1024 characters")
        try:
            return await self._hasher.hash(password)
        except HasherBusy as e:
            raise HttpError(503, "unavailable", f"too many passwords are being hashed; retry in {e.retry_after} "
                            "seconds", {"retry-after": str(e.retry_after)}) from None

    async def get(self, request: Request) -> tuple[int, Any]:
        principal = await self.principal(request)
        path = _path(request)
        if not path:
            return 200, {"agents": [a.to_wire() for a in await self._wf.list_agents()]}
        if len(path) != 1 or (principal.role != "admin" and path[0] != principal.user_id):
            raise HttpError(404, "not_found", "no such agent")
        agent = await self._wf.get_agent(path[0])
        if agent is None:
            raise HttpError(404, "not_found", "no such agent")
        return 200, agent.to_wire()

    async def post(self, request: Request) -> tuple[int, Any]:
        await self.principal(request, ("admin",))
        if _path(request):
            raise HttpError(404, "not_found", "no such resource")
        data = read_json(request)
        login = data.get("login")
        if not isinstance(login, str) or not ID_RE.match(login):
            raise HttpError(400, "bad_request", "login must be 1-64 letters, digits or _.@-")
        agent_id = data.get("id", login)
        if not isinstance(agent_id, str) or not ID_RE.match(agent_id):
            raise HttpError(400, "bad_request", "id must be 1-64 letters, digits or _.@-")
        fields = self._fields(data)
        agent = Agent(
            id=agent_id, login=login, name=fields.get("name", login), role=fields.get("role", "agent"),
            team_id=fields.get("team_id", ""), capacity=fields.get("capacity", self._config.default_capacity),
            password_hash=await self._hash(data.get("password")), created_at=self._reactor.seconds(),
        )
        await self._check_team(agent.team_id)
        try:
            created = await self._wf.create_agent(agent)
        except WorkflowError as e:
            raise HttpError(409, "conflict", str(e)) from None
        return 201, created.to_wire()

    def _fields(self, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "name" in data:
            if not isinstance(data["name"], str) or not 1 <= len(data["name"]) <= 200:
                raise HttpError(400, "bad_request", "name must be 1-200 characters")
            out["name"] = data["name"]
        if "role" in data:
            if data["role"] not in ("agent", "admin"):
                raise HttpError(400, "bad_request", "role must be agent or admin")
            out["role"] = data["role"]
        if "team" in data:
            if not isinstance(data["team"], str) or len(data["team"]) > 64:
                raise HttpError(400, "bad_request", "team must be a team id ('' for none)")
            out["team_id"] = data["team"]
        if "capacity" in data:
            cap = data["capacity"]
            if not isinstance(cap, int) or isinstance(cap, bool) or not 0 <= cap <= 1000:
                raise HttpError(400, "bad_request", "capacity must be an integer between 0 and 1000")
            out["capacity"] = cap
        if "disabled" in data:
            if not isinstance(data["disabled"], bool):
                raise HttpError(400, "bad_request", "disabled must be true or false")
            out["disabled"] = data["disabled"]
        if "status" in data:
            raise HttpError(400, "bad_request", "agents set their own status (frame status)")
        return out

    async def _check_team(self, team: str) -> None:
        if team and team not in {t.id for t in await self._wf.list_teams()}:
            raise HttpError(400, "bad_request", "no such team")

    async def patch(self, request: Request) -> tuple[int, Any]:
        await self.principal(request, ("admin",))
        path = _path(request)
        if len(path) != 1:
            raise HttpError(404, "not_found", "no such resource")
        data = read_json(request)
        changes = self._fields(data)
        if "password" in data:
            changes["password_hash"] = await self._hash(data["password"])
        if "team_id" in changes:
            await self._check_team(changes["team_id"])
        agent, requeued = await self._wf.update_agent(path[0], changes, self._reactor.seconds())
        if agent is None:
            raise HttpError(404, "not_found", "no such agent")
        await self._on_change(agent, requeued)
        return 200, agent.to_wire()


class TeamsApi(WorkflowResource):
    """``/api/v1/teams[/{id}]``."""

    routes = {b"GET": "get", b"POST": "post", b"PATCH": "patch"}

    async def get(self, request: Request) -> tuple[int, Any]:
        await self.principal(request)
        if _path(request):
            raise HttpError(404, "not_found", "no such resource")
        return 200, {"teams": [t.to_wire() for t in await self._wf.list_teams()]}

    def _name(self, data: dict[str, Any]) -> str:
        name = data.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise HttpError(400, "bad_request", "name must be 1-200 characters")
        return name

    async def post(self, request: Request) -> tuple[int, Any]:
        await self.principal(request, ("admin",))
        data = read_json(request)
        team_id = data.get("id")
        if _path(request) or not isinstance(team_id, str) or not ID_RE.match(team_id):
            raise HttpError(400, "bad_request", "id must be 1-64 letters, digits or _.@-")
        try:
            team = await self._wf.create_team(team_id, self._name(data), self._reactor.seconds())
        except WorkflowError as e:
            raise HttpError(409, "conflict", str(e)) from None
        return 201, team.to_wire()

    async def patch(self, request: Request) -> tuple[int, Any]:
        await self.principal(request, ("admin",))
        path = _path(request)
        if len(path) != 1:
            raise HttpError(404, "not_found", "no such resource")
        team = await self._wf.rename_team(path[0], self._name(read_json(request)))
        if team is None:
            raise HttpError(404, "not_found", "no such team")
        return 200, team.to_wire()


# Scripts a first message's language is guessed from (a queue entry's `lang`);
# Latin letters say nothing about the language: no guess.
_SCRIPTS = (("zh", re.compile(r"[\u4e00-\u9fff]")), ("ja", re.compile(r"[\u3040-\u30ff]")),
            ("ko", re.compile(r"[\uac00-\ud7af]")), ("ar", re.compile(r"[\u0600-\u06ff]")),
            ("he", re.compile(r"[\u0590-\u05ff]")), ("ru", re.compile(r"[\u0400-\u04ff]")))
PREVIEW_CHARS = 140


def guess_language(text: str) -> str | None:
    """A language code from the script of ``text`` (kana before Han: Japanese), or None."""
    if _SCRIPTS[1][1].search(text):
        return "ja"
    for code, script in _SCRIPTS:
        if script.search(text):
            return code
    return None


class InboxApi(WorkflowResource):
    """``/api/v1/inbox[/{conversation}]``: conversations in the workflow.
    Queued ones carry ``preview`` (the customer's first text message,
    cut at PREVIEW_CHARS) and ``lang`` (guessed from its script), so a
    console can show who is waiting without joining."""

    routes = {b"GET": "get"}

    def __init__(self, reactor: Any, authn: Authenticator, workflow: WorkflowStore,
                 history: HistoryStore | None = None) -> None:
        super().__init__(reactor, authn, workflow)
        self._history = history

    async def _preview(self, conversation_id: str) -> dict[str, Any]:
        """The first customer text, and the language: the one the visitor's
        client gave at ``start`` (in the ``created`` event), else a guess
        from that text's script."""
        if self._history is None:
            return {}
        said: str | None = None
        for m in await self._history.messages_page(conversation_id, 0, None, 30):
            if m.kind == EVENT and (m.data or {}).get("name") == "created":
                said = (m.data or {}).get("lang") or None
            elif m.kind == TEXT and m.sender_role == "customer" and m.body.strip():
                text = m.body.strip()
                return {"preview": text[:PREVIEW_CHARS], "lang": said or guess_language(text)}
        return {"preview": None, "lang": said}

    async def get(self, request: Request) -> tuple[int, Any]:
        principal = await self.principal(request)
        me = await self._wf.get_agent(principal.user_id)
        own_team = me.team_id if me is not None else ""
        path = _path(request)
        if path:
            item = await self._wf.get_item(path[0]) if len(path) == 1 else None
            if item is None or (principal.role != "admin" and item.team_id != own_team
                                and item.agent_id != principal.user_id):
                raise HttpError(404, "not_found", "no such conversation")
            out = item.to_wire()
            out["notes"] = [n.to_wire() for n in await self._wf.notes(item.conversation_id)]
            out["waiting"] = self._waiting(item)
            return 200, out
        state = str_arg(request, "state")
        if state is not None and state not in ("bot", "queued", "assigned", "closed"):
            raise HttpError(400, "bad_request", "state must be bot, queued, assigned or closed")
        team = str_arg(request, "team")
        if principal.role != "admin":
            if team is not None and team != own_team:
                raise HttpError(403, "forbidden", "agents see their own team's conversations")
            team = own_team
        waiting_min = int_arg(request, "waiting_min", None, 0)
        unread = str_arg(request, "unread")
        if unread not in (None, "true", "false"):
            raise HttpError(400, "bad_request", "unread must be true or false")
        limit = int_arg(request, "limit", 100, 1, 1000)
        assert limit is not None
        queued_before = None if waiting_min is None else self._reactor.seconds() - waiting_min
        items = await self._wf.list_items(state, str_arg(request, "agent"), team, limit, queued_before,
                                          unread == "true")
        counts = await self._wf.agent_unread([i.conversation_id for i in items])
        found = []
        for item in items:
            entry = item.to_wire()
            entry["waiting"] = self._waiting(item)
            entry["unread"] = counts.get(item.conversation_id, 0)
            if item.state == "queued":
                entry.update(await self._preview(item.conversation_id))
            found.append(entry)
        return 200, {"conversations": found}

    def _waiting(self, item: Any) -> float:
        """Seconds in the queue (so far, if still queued)."""
        end = item.assigned_at if item.assigned_at is not None else (
            item.closed_at if item.closed_at is not None else self._reactor.seconds())
        return round(max(0.0, end - item.queued_at), 3)


class CsatApi(WorkflowResource):
    """``GET /api/v1/csat?since=``: ratings count, average, distribution, per agent."""

    routes = {b"GET": "get"}

    async def get(self, request: Request) -> tuple[int, Any]:
        await self.principal(request, ("admin",))
        since = int_arg(request, "since", 0, 0)
        return 200, await self._wf.csat_report(float(since or 0))


__all__ = ["AgentsApi", "CsatApi", "InboxApi", "LoginApi", "TeamsApi", "STATUSES"]
