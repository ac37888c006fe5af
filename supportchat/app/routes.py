"""The URL tree, built from the container's getters:

``/ws`` (gateway role), the web widget and console, ``/healthz``,
``/readyz``, ``/metrics`` and ``/api/v1/...``; the Autobahn testee when
``[websocket] testee_path`` is set."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.web.resource import IResource, Resource

from supportchat.config import Config
from supportchat.http.admin_api import AdminApi
from supportchat.http.common import normalize_origin
from supportchat.http.guard import GuardedWebSocketResource
from supportchat.http.history import ConversationsApi, SearchApi
from supportchat.http.me_api import MeApi
from supportchat.http.site import BodyLimits, BoundedSite
from supportchat.http.resources import ApiRoot, Healthz, MetricsResource, Readyz, Visitors
from supportchat.http.web import mount_web
from supportchat.ratelimit import KeyedRateLimiter
from supportchat.ws.options import websocket_options
from supportchat.ws.protocol import EchoTesteeFactory

if TYPE_CHECKING:
    from supportchat.server import SupportChatServer

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::", "")


def own_origins(config: Config) -> list[str]:
    """Origins allowed by default: the public URL's, or each TCP listener's
    (with localhost aliases for loopback and wildcard interfaces)."""
    if config.server.public_url:
        origin = normalize_origin(config.server.public_url)
        return [origin] if origin else []
    out: list[str] = []
    for desc in config.server.listen:
        parts = desc.split(":")
        kind = parts[0]
        if kind not in ("tcp", "ssl") or len(parts) < 2 or not parts[1].isdigit():
            continue
        port = parts[1]
        iface = ""
        for p in parts[2:]:
            if p.startswith("interface="):
                iface = p[len("interface="):]
        scheme = "https" if kind == "ssl" else "http"
        hosts = [iface] if iface not in LOCAL_HOSTS else ["127.0.0.1", "localhost"]
        for host in hosts:
            origin = normalize_origin(f"{scheme}://{host}:{port}")
            if origin and origin not in out:
                out.append(origin)
    return out


def serving_chat(server: SupportChatServer) -> bool:
    """In Redis mode a node serves chat once it has reached Redis at
    least once (so presence and routing are right from the first
    connection); afterwards an outage means degraded mode, not refusal."""
    return not server.redis_mode or server.get_redis().connected_once.called


async def _readiness(server: SupportChatServer) -> dict[str, Any]:
    db = server.get_database()
    version = await db.schema_version()
    latest = db.latest_version
    details: dict[str, Any] = {
        "ready": version == latest,
        "database": "ok" if version == latest else "not migrated",
        "schema_version": version,
        "expected_schema_version": latest,
        "roles": list(server.roles),
    }
    if server.redis_mode:
        # Degraded (Redis down) and backpressure are reported, not fatal:
        # every gateway shares them, and taking all out helps nobody.
        details.update(server.get_monitor().readiness())
        details["ready"] = details["ready"] and serving_chat(server)
    return details


def readiness(server: SupportChatServer) -> "Deferred[dict[str, Any]]":
    """What ``/readyz`` reports: the schema, the roles, and in Redis mode
    the cluster monitor's view."""
    return Deferred.fromCoroutine(_readiness(server))


def build_root(server: SupportChatServer) -> Resource:
    """The whole URL tree of one node."""
    config = server.config
    root = ApiRoot()
    if "gateway" in server.roles:
        _put_path(root, _segments(config.websocket.path), GuardedWebSocketResource(
            server.get_chat_factory(), server.get_authenticator(), server.get_handshake_limiter(),
            server.get_allowed_origins(), server.get_metrics(), serving=lambda: serving_chat(server),
        ))
    mount_web(root)
    root.putChild(b"healthz", Healthz())
    root.putChild(b"readyz", Readyz(lambda: readiness(server)))
    root.putChild(b"metrics", MetricsResource(server.get_metrics()))
    api = ApiRoot()
    v1 = ApiRoot()
    api.putChild(b"v1", v1)
    root.putChild(b"api", api)
    _mount_api(server, v1)
    if config.websocket.testee_path:
        from autobahn.twisted.resource import WebSocketResource

        testee = EchoTesteeFactory(server.reactor)
        testee.setProtocolOptions(**websocket_options(
            config.websocket, server.get_allowed_origins(),
            max_message_bytes=config.websocket.testee_max_message_bytes,
        ))
        _put_path(root, _segments(config.websocket.testee_path), WebSocketResource(testee))
    return root


NO_BODY = 1024


def body_limits(config: Config) -> BodyLimits:
    """The largest request body of each route, in one place. Every route
    not listed gets ``[server] max_body_bytes``; the JSON endpoints of the
    console read at most ``workflow_api.MAX_BODY``; an upload to
    ``/api/v1/attachments`` ``[attachments] max_bytes`` plus its multipart
    wrapping; routes that read no body
    at all tolerate a stray one of ``NO_BODY`` bytes (so a wrong method still
    gets its 405). A larger ``Content-Length`` is answered 413 before the
    body is read (supportchat/http/site.py)."""
    from supportchat.http.workflow_api import MAX_BODY

    default = config.server.max_body_bytes
    json_small = min(MAX_BODY, default)
    routes = {path: json_small for path in (
        "/api/v1/login", "/api/v1/refresh", "/api/v1/agents", "/api/v1/teams", "/api/v1/canned",
        "/api/v1/customers", "/api/v1/webhooks", "/api/v1/email", "/api/v1/unsubscribe",
    )}
    if config.attachments.enabled:
        from supportchat.http.attachments_api import MULTIPART_OVERHEAD

        # An upload: the file plus what multipart/form-data wraps it in.
        routes["/api/v1/attachments"] = config.attachments.max_bytes + MULTIPART_OVERHEAD
    routes.update({path: min(NO_BODY, default) for path in (
        config.websocket.path, "/api/v1/conversations", "/api/v1/search", "/api/v1/me", "/api/v1/admin",
        "/api/v1/inbox", "/api/v1/csat", "/api/v1/openapi.json", "/healthz", "/readyz", "/metrics",
    )})
    return BodyLimits(default, routes)


def build_site(server: SupportChatServer, root: IResource, log_formatter: Any) -> BoundedSite:
    """The web ``Site`` of one node: request deadline, keep-alive idle time
    and body limits (supportchat/http/site.py)."""
    config = server.config
    refusals = server.get_metrics().http_refusals
    paths = (config.websocket.path,) + ((config.websocket.testee_path,) if config.websocket.testee_path else ())
    return BoundedSite(
        root, server.reactor,
        request_timeout=config.server.request_timeout,
        handshake_timeout=config.websocket.open_handshake_timeout,
        idle_timeout=config.server.idle_timeout,
        body_limits=body_limits(config),
        websocket_paths=paths,
        on_refusal=lambda reason: refusals.labels(reason).inc(),
        logFormatter=log_formatter,
        long_deadlines={"/api/v1/attachments": config.attachments.upload_timeout}
        if config.attachments.enabled else None,
    )


def _mount_api(server: SupportChatServer, v1: Resource) -> None:
    """``/api/v1/...``."""
    config, reactor = server.config, server.reactor
    v1.putChild(b"visitors", Visitors(
        reactor, server.get_issuer(), config.auth.visitor_token_ttl,
        KeyedRateLimiter(reactor, config.auth.handshake_rate, config.auth.handshake_burst),
        config.auth.visitors_enabled, server.get_allowed_origins(),
    ))
    v1.putChild(b"widget-config", _widget_config(server))
    authn = server.get_authenticator()  # every route below authenticates through it
    links = server.get_links()
    names, notes = _history_extras(server)
    v1.putChild(b"conversations", ConversationsApi(
        authn, server.get_history_store(), config.chat.sync_limit_max, links=links, names=names, notes=notes))
    v1.putChild(b"search", SearchApi(authn, server.get_history_store(), links=links))
    v1.putChild(b"me", MeApi(authn, server.get_allowed_origins()))
    if config.attachments.enabled:
        from supportchat.http.attachments_api import AttachmentsApi

        v1.putChild(b"attachments", AttachmentsApi(authn, server.get_attachments(), server.get_allowed_origins()))
    if config.workflow.enabled:
        _mount_workflow_api(server, v1)
    from supportchat.http.webhooks_api import WebhooksApi
    from supportchat.webhooks.client import parse_networks

    v1.putChild(b"webhooks", WebhooksApi(
        reactor, authn, server.get_webhook_store(), parse_networks(config.webhooks.allowed_private_networks),
        poke=lambda: server.get_webhook_dispatcher().poke() if server.runs_webhooks else None))
    from supportchat.http.email_api import EmailApi, UnsubscribeResource

    v1.putChild(b"email", EmailApi(
        reactor, authn, server.get_email_store(), config.email.enabled, server.get_allowed_origins(),
        poke=lambda: server.get_email_dispatcher().poke() if server.runs_email else None))
    v1.putChild(b"unsubscribe", UnsubscribeResource(reactor, server.get_email_store(), server.get_secret()))
    from supportchat.http.openapi import OpenApiResource

    v1.putChild(b"openapi.json", OpenApiResource())
    attachments = server.get_attachments() if config.attachments.enabled else None
    v1.putChild(b"admin", AdminApi(
        reactor, authn, server.get_history_store(), config.database.retention_batch,
        server.get_profiles(),
        attachment_link=attachments.links.url if attachments is not None else None,
        after_erase=attachments.sweep if attachments is not None else None))


def _history_extras(server: SupportChatServer) -> tuple[Any, Any]:
    """With the workflow on, REST history also names the agents who wrote and
    (for staff) lists the internal notes of the page, like ``sync``."""
    if not server.config.workflow.enabled:
        return None, None
    store = server.get_workflow_store()

    async def names(user_ids: set[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for user_id in sorted(user_ids)[:20]:
            agent = await store.get_agent(user_id)
            if agent is not None and agent.name:
                found[user_id] = agent.name
        return found

    async def notes(conversation_id: str, lo: int, hi: int | None) -> list[dict[str, Any]]:
        return [n.to_wire() for n in await store.notes(conversation_id, lo - 1) if hi is None or n.after_seq <= hi]

    return names, notes


def _widget_config(server: SupportChatServer) -> Resource:
    """The public widget configuration: the bot's greeting and quick replies, business hours, agents online."""
    from supportchat.http.widget_config import WidgetConfig

    config = server.config
    agents_online = None
    if config.workflow.enabled:
        store = server.get_workflow_store()

        async def agents_online() -> bool:
            return any(a.status == "online" and not a.disabled for a in await store.list_agents())

    return WidgetConfig(server.reactor, server.get_knowledge() if config.bot.enabled else None,
                        server.get_business_hours(), agents_online, server.get_allowed_origins(),
                        email=config.email.enabled)


def _mount_workflow_api(server: SupportChatServer, v1: Resource) -> None:
    """Login, agents, teams, inbox, CSAT, canned replies and customer profiles."""
    from supportchat.http.canned_api import CannedApi
    from supportchat.http.profiles_api import CustomersApi
    from supportchat.http.workflow_api import AgentsApi, CsatApi, InboxApi, LoginApi, LoginThrottle, TeamsApi

    reactor, cfg = server.reactor, server.config.workflow
    store, authn, issuer = server.get_workflow_store(), server.get_authenticator(), server.get_issuer()
    hasher = server.get_password_hasher()
    v1.putChild(b"login", LoginApi(reactor, authn, store, issuer, cfg, hasher,
                                   LoginThrottle(reactor, server.config.auth)))
    v1.putChild(b"refresh", LoginApi(reactor, authn, store, issuer, cfg, hasher, refresh=True))
    v1.putChild(b"agents", AgentsApi(reactor, authn, store, cfg, server.get_staff_notices().after_agent_change,
                                     hasher))
    v1.putChild(b"teams", TeamsApi(reactor, authn, store))
    v1.putChild(b"inbox", InboxApi(reactor, authn, store, server.get_history_store()))
    v1.putChild(b"csat", CsatApi(reactor, authn, store))
    v1.putChild(b"canned", CannedApi(reactor, authn, store, server.get_canned_store(),
                                     server.get_staff_notices().canned_changed))
    v1.putChild(b"customers", CustomersApi(reactor, authn, store, server.get_profiles(),
                                           server.get_staff_notices().profile_changed))


def _segments(path: str) -> list[bytes]:
    return [p.encode() for p in path.strip("/").split("/")]


def _put_path(root: Resource, path: list[bytes], leaf: IResource) -> None:
    node = root
    for segment in path[:-1]:
        child = node.children.get(segment)
        if not isinstance(child, Resource):
            child = Resource()
            node.putChild(segment, child)
        node = child
    node.putChild(path[-1], leaf)
