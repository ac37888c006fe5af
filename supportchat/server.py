"""The server container: built with the reactor and the config, it makes
each component once, on first use (``get_<thing>()``), and composes the
services. Nothing else builds components or touches a global reactor."""

from __future__ import annotations

from typing import Any, Callable, TypeVar, cast

import txaio
from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.application.strports import service as strports_service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from supportchat.auth import TokenIssuer, TokenVerifier, ensure_secret
from supportchat.background import BackgroundTasks
from supportchat.bus.memory import LocalBus
from supportchat.config import Config
from supportchat.handlers.chat import ChatHandler
from supportchat.handlers.connections import ConnectionRegistry
from supportchat.http.common import normalize_origin, redacting_log_formatter
from supportchat.http.guard import GuardedWebSocketResource
from supportchat.http.resources import ApiRoot, Healthz, MetricsResource, Readyz, Visitors
from supportchat.http.web import mount_web
from supportchat.metrics import Metrics
from supportchat.ratelimit import KeyedRateLimiter
from supportchat.service import ChatService, DatabaseService, OrderedMultiService
from supportchat.http.admin_api import AdminApi
from supportchat.http.history import ConversationsApi, SearchApi
from supportchat.storage.database import Database
from supportchat.storage.history import Retention, SqlHistoryStore
from supportchat.storage.engines import engine_from_url
from supportchat.storage.memory import MemoryPresenceStore
from supportchat.storage.sql import SqlConversationStore, SqlIdempotencyStore

ROLES_ALL = ("gateway", "persister", "bot")
from supportchat.ws.options import websocket_options
from supportchat.ws.protocol import ChatServerFactory, EchoTesteeFactory

T = TypeVar("T")

PURGE_INTERVAL = 3600.0
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


class SupportChatServer:
    """Everything one node needs, built lazily from the reactor and config."""

    def __init__(self, reactor: Any, config: Config, threadless_db: bool = False,
                 roles: tuple[str, ...] = ROLES_ALL) -> None:
        self.reactor = reactor
        self.config = config
        self.roles = roles
        self._threadless_db = threadless_db
        self._built: dict[str, Any] = {}
        txaio.use_twisted()
        txaio.config.loop = reactor  # type: ignore[attr-defined]

    def _once(self, name: str, make: Callable[[], T]) -> T:
        if name not in self._built:
            self._built[name] = make()
        return cast(T, self._built[name])

    # -- components ----------------------------------------------------
    def get_metrics(self) -> Metrics:
        return self._once("metrics", Metrics)

    def get_background(self) -> BackgroundTasks:
        return self._once("background", BackgroundTasks)

    def get_database(self) -> Database:
        def make() -> Database:
            engine = engine_from_url(self.config.database_url(), self.config.database.sqlite_synchronous)
            return Database(engine, self.reactor, self.config.database.pool_size, threadless=self._threadless_db,
                            retry_for=self.config.database.retry_seconds)

        return self._once("database", make)

    def get_store(self) -> SqlConversationStore:
        return self._once(
            "store", lambda: SqlConversationStore(self.get_database(), self.config.database.group_commit_max)
        )

    def get_history_store(self) -> SqlHistoryStore:
        return self._once("history", lambda: SqlHistoryStore(self.get_database()))

    def get_retention(self) -> Retention:
        return self._once("retention", lambda: Retention(
            self.reactor, self.get_history_store(), self.config.database.retention_days,
            self.config.database.retention_batch,
        ))

    def get_idempotency_store(self) -> SqlIdempotencyStore:
        return self._once("idempotency", lambda: SqlIdempotencyStore(self.get_database()))

    # -- Redis mode ------------------------------------------------------
    @property
    def redis_mode(self) -> bool:
        return bool(self.config.redis.url)

    def get_node_id(self) -> str:
        def make() -> str:
            import os
            import socket

            return self.config.server.node_id or f"{socket.gethostname()}-{os.getpid()}"

        return self._once("node_id", make)

    def get_redis(self) -> Any:
        from supportchat.redis.connection import RedisClient

        return self._once("redis", lambda: RedisClient(self.reactor, self.config.redis.url, name="redis"))

    def get_redis_subscriber(self) -> Any:
        from supportchat.redis.bus import make_subscriber_hook
        from supportchat.redis.connection import RedisClient

        return self._once("redis_subscriber", lambda: RedisClient(
            self.reactor, self.config.redis.url, name="redis-subscriber", subscriber=True,
            on_connect=make_subscriber_hook(self.get_bus()), on_message=self.get_bus().on_message,
        ))

    def get_chat_store(self) -> Any:
        """What the chat handler writes to: Redis first in Redis mode, SQL otherwise."""
        def make() -> Any:
            if not self.redis_mode:
                return self.get_store()
            from supportchat.redis.store import RedisChatStore

            return RedisChatStore(self.reactor, self.get_redis(), self.get_store(), self.config.redis.prefix,
                                  self.config.redis.retry_after)

        return self._once("chat_store", make)

    def get_monitor(self) -> Any:
        from supportchat.redis.node import ClusterMonitor

        return self._once("monitor", lambda: ClusterMonitor(
            self.reactor, self.get_redis(), self.get_metrics(), self.get_node_id(), list(self.roles),
            self.config.redis.prefix, self.config.redis.node_ttl, self.config.redis.backlog_high,
            self.config.redis.backlog_low, self.get_chat_store() if "gateway" in self.roles else None,
        ))

    def get_bus(self) -> Any:
        def make() -> Any:
            if not self.redis_mode:
                return LocalBus()
            from supportchat.redis.bus import RedisBus

            bus = RedisBus(self.get_redis(), self.get_presence(), self.get_node_id(), self.config.redis.prefix)
            store = self.get_chat_store()
            bus.subscribe(lambda delivery: store.observe(delivery.frame))
            return bus

        return self._once("bus", make)

    def get_presence(self) -> Any:
        def make() -> Any:
            if not self.redis_mode:
                return MemoryPresenceStore(self.reactor, self.config.chat.presence_ttl)
            from supportchat.redis.presence import RedisPresenceStore

            return RedisPresenceStore(self.reactor, self.get_redis(), self.config.chat.presence_ttl,
                                      self.get_node_id(), self.config.redis.prefix)

        return self._once("presence", make)

    def get_registry(self) -> ConnectionRegistry:
        return self._once(
            "registry", lambda: ConnectionRegistry(on_change=self.get_metrics().connections.set)
        )

    def get_handler(self) -> ChatHandler:
        return self._once(
            "handler",
            lambda: ChatHandler(
                clock=self.reactor,
                store=self.get_chat_store(),
                bus=self.get_bus(),
                presence=self.get_presence(),
                registry=self.get_registry(),
                metrics=self.get_metrics(),
                background=self.get_background(),
                config=self.config.chat,
                heartbeat=self.config.websocket.heartbeat,
                workflow=self.get_workflow() if self.config.workflow.enabled else None,
            ),
        )

    # -- support workflow ------------------------------------------------
    def get_workflow_store(self) -> Any:
        from supportchat.workflow.store import SqlWorkflowStore

        return self._once("workflow_store", lambda: SqlWorkflowStore(self.get_database()))

    def get_canned_store(self) -> Any:
        from supportchat.workflow.canned import SqlCannedStore

        return self._once("canned_store", lambda: SqlCannedStore(self.get_database()))

    def get_profiles(self) -> Any:
        """Customer profiles with the [profile] keyring (docs/profiles.md)."""
        from supportchat.workflow.profiles import ProfileService

        return self._once("profiles", lambda: ProfileService.from_config(self.get_database(), self.config.profile))

    def get_workflow(self) -> Any:
        from supportchat.handlers.workflow import WorkflowHandler

        return self._once("workflow", lambda: WorkflowHandler(
            self.reactor, self.get_chat_store(), self.get_workflow_store(), self.get_bus(), self.get_registry(),
            self.get_presence(), self.get_background(), self.config.workflow, bot_first=self.config.bot.enabled,
            hours=self._business_hours(),
        ))

    def _business_hours(self) -> Any:
        """The one definition of business hours: ``[bot] business_hours`` in ``[bot] timezone``."""
        from supportchat.bot.hours import BusinessHours

        return BusinessHours(self.config.bot.business_hours, self.config.bot.timezone)

    def _mount_workflow_api(self, v1: Resource) -> None:
        from supportchat.http.workflow_api import AgentsApi, CsatApi, InboxApi, LoginApi, TeamsApi

        store, verifier = self.get_workflow_store(), self.get_verifier()
        cfg = self.config.workflow
        v1.putChild(b"login", LoginApi(self.reactor, verifier, store, self.get_issuer(), cfg))
        v1.putChild(b"refresh", LoginApi(self.reactor, verifier, store, self.get_issuer(), cfg, refresh=True))
        v1.putChild(b"agents", AgentsApi(self.reactor, verifier, store, cfg, self.get_workflow().after_agent_change))
        v1.putChild(b"teams", TeamsApi(self.reactor, verifier, store))
        v1.putChild(b"inbox", InboxApi(self.reactor, verifier, store))
        v1.putChild(b"csat", CsatApi(self.reactor, verifier, store))
        from supportchat.http.canned_api import CannedApi

        v1.putChild(b"canned", CannedApi(self.reactor, verifier, store, self.get_canned_store()))
        from supportchat.http.profiles_api import CustomersApi

        v1.putChild(b"customers", CustomersApi(self.reactor, verifier, store, self.get_profiles(),
                                               self.get_workflow().profile_changed))

    def _drain_tick(self) -> None:
        """The workflow's timer: agents connected nowhere are set offline
        and, gone long enough, lose their conversations to the queue; then
        the queue is drained."""
        workflow = self.get_workflow()
        self.get_background().run("workflow_sweep_agents", lambda: Deferred.fromCoroutine(workflow.sweep_agents()))
        workflow.request_drain()

    # -- bot ---------------------------------------------------------------
    def get_bot_states(self) -> Any:
        """Bot dialogue state: a Redis hash per conversation in Redis mode, SQL otherwise."""
        def make() -> Any:
            if self.redis_mode:
                from supportchat.bot.state import RedisBotStateStore

                return RedisBotStateStore(self.get_redis(), self.config.redis.prefix)
            from supportchat.bot.state import SqlBotStateStore

            return SqlBotStateStore(self.get_database())

        return self._once("bot_states", make)

    def get_bot_external(self) -> Any:
        """The external bot service client, or None without ``[bot] http_url``."""
        def make() -> Any:
            if not self.config.bot.http_url:
                return None
            from treq.client import HTTPClient
            from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

            from supportchat.bot.http import HttpExternalBot

            agent = Agent(self.reactor, contextFactory=BrowserLikePolicyForHTTPS(),
                          pool=HTTPConnectionPool(self.reactor), connectTimeout=self.config.bot.http_timeout)
            cfg = self.config.bot
            return HttpExternalBot(self.reactor, HTTPClient(agent), cfg.http_url, cfg.http_secret, cfg.http_timeout,
                                   cfg.http_retries)

        return self._once("bot_external", make)

    def get_bot(self) -> Any:
        def make() -> Any:
            from supportchat.bot.engine import Dialogue
            from supportchat.bot.knowledge import load_knowledge
            from supportchat.bot.node import BotNode

            cfg = self.config.bot
            return BotNode(
                self.reactor, self.get_chat_store(), self.get_bus(), self.get_bot_states(),
                Dialogue(load_knowledge(cfg.knowledge), cfg.threshold, cfg.max_misses),
                self._business_hours(), self.get_metrics(), cfg, self.get_bot_external(),
                float(self.config.chat.idempotency_window),
                on_handoff=self.get_workflow().on_handoff if self.config.workflow.enabled else None,
            )

        return self._once("bot", make)

    def _bot_service(self) -> IService:
        from supportchat.bot.node import BotService, LocalBotFeed, StreamBotConsumer

        node = self.get_bot()
        feed = LocalBotFeed(node, self.get_bus(), self.get_background(), messages=not self.redis_mode)
        service = BotService(self.reactor, node, feed, self.get_background(),
                             None if self.redis_mode else self.get_database(), self.config.server.shutdown_timeout)
        if self.redis_mode:
            from supportchat.redis.connection import RedisClient

            client = RedisClient(self.reactor, self.config.redis.url, name="redis-bot", reply_timeout=30.0)
            client.service.setServiceParent(service)
            StreamBotConsumer(
                self.reactor, client, node, self.get_node_id(), prefix=self.config.redis.prefix,
                claim_idle_ms=int(self.config.bot.claim_idle * 1000), max_deliveries=self.config.bot.max_deliveries,
            ).setServiceParent(service)
        service.setName("bot")
        return service

    def get_secret(self) -> str:
        return self._once(
            "secret", lambda: ensure_secret(self.config.auth, self.config.server.data_dir)[0]
        )

    def get_verifier(self) -> TokenVerifier:
        return self._once("verifier", lambda: TokenVerifier(self.config.auth, self.get_secret()))

    def get_issuer(self) -> TokenIssuer:
        return self._once("issuer", lambda: TokenIssuer(self.config.auth, self.get_secret()))

    def get_allowed_origins(self) -> list[str]:
        def make() -> list[str]:
            configured = [normalize_origin(o) for o in self.config.websocket.allowed_origins]
            return [o for o in configured if o] + own_origins(self.config)

        return self._once("origins", make)

    def get_chat_factory(self) -> ChatServerFactory:
        def make() -> ChatServerFactory:
            factory = ChatServerFactory(
                self.reactor, self.get_handler(), self.get_background(), self.config.websocket, self.config.chat
            )
            factory.setProtocolOptions(**websocket_options(self.config.websocket, self.get_allowed_origins()))
            if self.config.workflow.enabled:
                from supportchat.http.profiles_api import claim_upserter

                factory.on_profile = claim_upserter(self.get_profiles(), self.reactor)
            return factory

        return self._once("chat_factory", make)

    def get_handshake_limiter(self) -> KeyedRateLimiter:
        return self._once(
            "handshake_limiter",
            lambda: KeyedRateLimiter(self.reactor, self.config.auth.handshake_rate, self.config.auth.handshake_burst),
        )

    @inlineCallbacks
    def readiness(self) -> Any:
        db = self.get_database()
        version = yield db.schema_version()
        latest = db.latest_version
        details: dict[str, Any] = {
            "ready": version == latest,
            "database": "ok" if version == latest else "not migrated",
            "schema_version": version,
            "expected_schema_version": latest,
            "roles": list(self.roles),
        }
        if self.redis_mode:
            # Degraded (Redis down) and backpressure are reported, not fatal:
            # every gateway shares them, and taking all out helps nobody.
            details.update(self.get_monitor().readiness())
            details["ready"] = details["ready"] and self.serving_chat()
        return details

    def serving_chat(self) -> bool:
        """In Redis mode a node serves chat once it has reached Redis at
        least once (so presence and routing are right from the first
        connection); afterwards an outage means degraded mode, not refusal."""
        return not self.redis_mode or self.get_redis().connected_once.called

    def get_root_resource(self) -> Resource:
        def make() -> Resource:
            root = ApiRoot()
            if "gateway" in self.roles:
                ws_path = [p.encode() for p in self.config.websocket.path.strip("/").split("/")]
                _put_path(root, ws_path, GuardedWebSocketResource(
                    self.get_chat_factory(), self.get_verifier(), self.get_handshake_limiter(),
                    self.get_allowed_origins(), self.get_metrics(), serving=self.serving_chat,
                ))
            mount_web(root)
            root.putChild(b"healthz", Healthz())
            root.putChild(b"readyz", Readyz(self.readiness))
            root.putChild(b"metrics", MetricsResource(self.get_metrics()))
            api = ApiRoot()
            v1 = ApiRoot()
            api.putChild(b"v1", v1)
            root.putChild(b"api", api)
            v1.putChild(b"visitors", Visitors(
                self.reactor, self.get_issuer(), self.config.auth.visitor_token_ttl,
                KeyedRateLimiter(self.reactor, self.config.auth.handshake_rate, self.config.auth.handshake_burst),
                self.config.auth.visitors_enabled, self.get_allowed_origins(),
            ))
            v1.putChild(b"conversations", ConversationsApi(
                self.get_verifier(), self.get_history_store(), self.config.chat.sync_limit_max))
            v1.putChild(b"search", SearchApi(self.get_verifier(), self.get_history_store()))
            from supportchat.http.me_api import MeApi
            v1.putChild(b"me", MeApi(self.get_verifier(), self.get_workflow_store() if self.config.workflow.enabled else None, self.get_allowed_origins()))
            if self.config.workflow.enabled:
                self._mount_workflow_api(v1)
            from supportchat.http.openapi import OpenApiResource

            v1.putChild(b"openapi.json", OpenApiResource())
            v1.putChild(b"admin", AdminApi(
                self.reactor, self.get_verifier(), self.get_history_store(), self.config.database.retention_batch,
                self.get_profiles()))
            if self.config.websocket.testee_path:
                from autobahn.twisted.resource import WebSocketResource

                testee = EchoTesteeFactory(self.reactor)
                testee.setProtocolOptions(**websocket_options(
                    self.config.websocket, self.get_allowed_origins(),
                    max_message_bytes=self.config.websocket.testee_max_message_bytes,
                ))
                path = [p.encode() for p in self.config.websocket.testee_path.strip("/").split("/")]
                _put_path(root, path, WebSocketResource(testee))
            return root

        return self._once("root", make)

    def get_site(self) -> Site:
        def make() -> Site:
            site = Site(self.get_root_resource(), logFormatter=redacting_log_formatter, reactor=self.reactor)
            site.displayTracebacks = False
            return site

        return self._once("site", make)

    # -- services ------------------------------------------------------
    @property
    def _bot_enabled(self) -> bool:
        return "bot" in self.roles and self.config.bot.enabled

    def make_service(self) -> IService:
        """database -> redis -> timers -> persister -> chat -> listeners;
        stopped one at a time in reverse (listeners first, database last)."""
        top = OrderedMultiService()
        top.setName("supportchat")
        gateway = "gateway" in self.roles
        db_service = DatabaseService(self.get_database(), self.get_store())
        db_service.setName("database")
        db_service.setServiceParent(top)
        if self.redis_mode:
            self.get_redis().service.setServiceParent(top)
            if gateway or self._bot_enabled:
                self.get_redis_subscriber().service.setServiceParent(top)
            monitor = TimerService(self.config.redis.monitor_interval, self._background_tick)
            monitor.clock = self.reactor
            monitor.setName("cluster-monitor")
            monitor.setServiceParent(top)
        if gateway:
            purge = TimerService(PURGE_INTERVAL, self._purge)
            purge.clock = self.reactor
            purge.setName("idempotency-purge")
            purge.setServiceParent(top)
            if self.config.database.retention_days > 0:
                retention = TimerService(PURGE_INTERVAL, self._retention_tick)
                retention.clock = self.reactor
                retention.setName("retention")
                retention.setServiceParent(top)
        if "persister" in self.roles and self.redis_mode:
            from supportchat.redis.connection import RedisClient
            from supportchat.redis.persister import Persister

            client = RedisClient(self.reactor, self.config.redis.url, name="redis-persister", reply_timeout=30.0)
            client.service.setServiceParent(top)
            persister = Persister(
                self.reactor, client, self.get_database(), self.get_metrics(), self.get_node_id(),
                prefix=self.config.redis.prefix, batch=self.config.redis.persister_batch,
                claim_idle_ms=int(self.config.redis.persister_claim_idle * 1000),
                max_deliveries=self.config.redis.persister_max_deliveries,
                idempotency_window=float(self.config.chat.idempotency_window),
                keep_for_others=self.config.redis.stream_keep_for_others,
            )
            persister.setName("persister")
            persister.setServiceParent(top)
        if gateway:
            chat = ChatService(
                self.reactor, self.get_chat_factory().close_all, self.get_handler(), self.get_background(),
                self.config.server.shutdown_timeout,
            )
            chat.setName("chat")
            chat.setServiceParent(top)
            if self.config.workflow.enabled:
                drain = TimerService(self.config.workflow.drain_interval, self._drain_tick)
                drain.clock = self.reactor
                drain.setName("workflow-drain")
                drain.setServiceParent(top)
        if self._bot_enabled:
            self._bot_service().setServiceParent(top)
        for i, desc in enumerate(self.config.server.listen):
            listener = strports_service(desc, self.get_site(), reactor=self.reactor)
            listener.setName(f"listen-{i}")
            listener.setServiceParent(top)
        return top

    def _background_tick(self) -> None:
        self.get_background().run("cluster_monitor", lambda: Deferred.fromCoroutine(self.get_monitor().tick()))

    def _retention_tick(self) -> None:
        self.get_background().run("retention", self.get_retention().tick)

    def _purge(self) -> None:
        self.get_background().run(
            "idempotency_purge", self.get_idempotency_store().purge, self.reactor.seconds()
        )


def _put_path(root: Resource, path: list[bytes], leaf: IResource) -> None:
    node = root
    for segment in path[:-1]:
        child = node.children.get(segment)
        if not isinstance(child, Resource):
            child = Resource()
            node.putChild(segment, child)
        node = child
    node.putChild(path[-1], leaf)

