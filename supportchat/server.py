"""The server container: built with the reactor and the config, it makes
each component once, on first use (``get_<thing>()``). Nothing else builds
components or touches a global reactor.

The URL tree is put together in :mod:`supportchat.app.routes` and the
service tree in :mod:`supportchat.app.services`; both only call getters.
Redis, the bot and the workflow are imported on first use (a node without
them never loads them); their types are imported for the type checker only.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

import txaio
from twisted.internet.threads import deferToThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from supportchat.app.routes import build_root, build_site, own_origins
from supportchat.auth import TokenIssuer, TokenVerifier, ensure_secret
from supportchat.background import BackgroundTasks
from supportchat.bus.interfaces import MessageBus
from supportchat.bus.memory import LocalBus
from supportchat.config import Config
from supportchat.handlers.assemble import build_router
from supportchat.handlers.router import FrameRouter
from supportchat.handlers.writer import MessageWriter
from supportchat.handlers.connections import ConnectionRegistry
from supportchat.http.authn import Authenticator
from supportchat.http.common import normalize_origin, redacting_log_formatter
from supportchat.hours import BusinessHours
from supportchat.metrics import Metrics
from supportchat.ratelimit import KeyedRateLimiter
from supportchat.storage.checkpoint import WalCheckpointer
from supportchat.storage.database import Database
from supportchat.storage.engines import SqliteEngine, engine_from_url
from supportchat.storage.history import Retention, SqlHistoryStore
from supportchat.storage.interfaces import ChatStore, PresenceStore
from supportchat.storage.memory import MemoryPresenceStore
from supportchat.storage.sql import SqlConversationStore, SqlIdempotencyStore
from supportchat.ws.options import websocket_options
from supportchat.ws.protocol import ChatServerFactory

if TYPE_CHECKING:
    from twisted.python.threadpool import ThreadPool

    from supportchat.attachments.links import LinkSigner
    from supportchat.attachments.service import AttachmentService
    from supportchat.bot.http import HttpExternalBot
    from supportchat.bot.knowledge import Knowledge
    from supportchat.bot.node import BotNode
    from supportchat.bot.state import BotStateStore
    from supportchat.email.dispatcher import EmailDispatcher
    from supportchat.email.sender import EmailSender
    from supportchat.email.store import SqlEmailStore
    from supportchat.handlers.notices import StaffNotices
    from supportchat.handlers.queue import WorkQueue
    from supportchat.redis.bus import RedisBus
    from supportchat.redis.connection import RedisClient
    from supportchat.redis.node import ClusterMonitor
    from supportchat.redis.presence import RedisPresenceStore
    from supportchat.redis.store import RedisChatStore
    from supportchat.webhooks.client import WebhookClient
    from supportchat.webhooks.dispatcher import WebhookDispatcher
    from supportchat.webhooks.store import SqlWebhookStore
    from supportchat.workflow.canned import SqlCannedStore
    from supportchat.workflow.passwords import PasswordHasher
    from supportchat.workflow.profiles import ProfileService
    from supportchat.workflow.store import SqlWorkflowStore

T = TypeVar("T")

ROLES_ALL = ("gateway", "persister", "bot")


class SupportChatServer:
    """Everything one node needs, built lazily from the reactor and config."""

    def __init__(self, reactor: Any, config: Config, roles: tuple[str, ...] = ROLES_ALL) -> None:
        self.reactor = reactor
        self.config = config
        self.roles = roles
        self._built: dict[str, Any] = {}
        txaio.use_twisted()
        txaio.config.loop = reactor  # type: ignore[attr-defined]

    def _once(self, name: str, make: Callable[[], T]) -> T:
        if name not in self._built:
            self._built[name] = make()
        return cast(T, self._built[name])

    @property
    def redis_mode(self) -> bool:
        return bool(self.config.redis.url)

    @property
    def bot_enabled(self) -> bool:
        """This node runs the bot: the bot role and ``[bot] enabled``."""
        return "bot" in self.roles and self.config.bot.enabled

    @property
    def runs_webhooks(self) -> bool:
        """The webhook dispatcher runs where messages are written to SQL: an
        embedded gateway, or the persister in Redis mode (one such node per
        cluster, or receivers get more duplicates), unless ``[webhooks]
        dispatch`` is off."""
        return self.config.webhooks.dispatch and ("persister" if self.redis_mode else "gateway") in self.roles

    @property
    def runs_email(self) -> bool:
        """The email service runs where the webhook dispatcher would: the
        node that writes messages to SQL, when ``[email]`` is enabled."""
        cfg = self.config.email
        return cfg.enabled and cfg.dispatch and ("persister" if self.redis_mode else "gateway") in self.roles

    # -- components ----------------------------------------------------
    def get_metrics(self) -> Metrics:
        return self._once("metrics", Metrics)

    def get_background(self) -> BackgroundTasks:
        return self._once("background", BackgroundTasks)

    def get_database(self) -> Database:
        def make() -> Database:
            engine = engine_from_url(self.config.database_url(), self.config.database.sqlite_synchronous,
                                     background_checkpoints=self._checkpoints_here())
            return Database(engine, self.reactor, self.config.database.pool_size,
                            retry_for=self.config.database.retry_seconds)

        return self._once("database", make)

    def _checkpoints_here(self) -> bool:
        """Background WAL checkpoints run where messages are written to
        SQL: every embedded node, and in Redis mode the persister's process
        (gateway workers there only read)."""
        if self.config.database.sqlite_checkpoint_interval <= 0:
            return False
        return not self.redis_mode or "persister" in self.roles

    def get_checkpointer(self) -> WalCheckpointer | None:
        """Background WAL checkpoints, for a SQLite file whose commits no
        longer run them (``[database] sqlite_checkpoint_interval``)."""
        def make() -> WalCheckpointer | None:
            engine = self.get_database().engine
            if not isinstance(engine, SqliteEngine) or not engine.background_checkpoints:
                return None
            metrics = self.get_metrics()

            def observe(seconds: float, pages: int) -> None:
                metrics.sqlite_checkpoint.observe(seconds)
                metrics.sqlite_wal_pages.set(pages)

            return WalCheckpointer(self.reactor, engine.checkpoint_connection,
                                   self.config.database.sqlite_checkpoint_interval, observe)

        return self._once("checkpointer", make)

    def get_store(self) -> SqlConversationStore:
        return self._once(
            "store", lambda: SqlConversationStore(self.get_database(), self.config.database.group_commit_max,
                                                  self.get_metrics())
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

    def get_node_id(self) -> str:
        return self._once("node_id", lambda: self.config.server.node_id or f"{socket.gethostname()}-{os.getpid()}")

    # -- Redis mode ------------------------------------------------------
    def get_redis(self) -> RedisClient:
        from supportchat.redis.connection import RedisClient

        return self._once("redis", lambda: RedisClient.from_config(self.reactor, self.config.redis, name="redis"))

    def get_redis_subscriber(self) -> RedisClient:
        from supportchat.redis.bus import make_subscriber_hook
        from supportchat.redis.connection import RedisClient

        return self._once("redis_subscriber", lambda: RedisClient.from_config(
            self.reactor, self.config.redis, name="redis-subscriber", subscriber=True,
            on_connect=make_subscriber_hook(self.get_redis_bus()), on_message=self.get_redis_bus().on_message,
        ))

    def get_redis_chat_store(self) -> RedisChatStore:
        """Redis first, SQL behind it (``supportchat.redis.store``)."""
        from supportchat.redis.store import RedisChatStore

        return self._once("redis_chat_store", lambda: RedisChatStore(
            self.reactor, self.get_redis(), self.get_store(), self.config.redis.prefix, self.config.redis.retry_after,
            self.config.redis.wait_replicas, self.config.redis.wait_timeout, self.get_node_id(),
            self.config.redis.stream_keep_for_others,
        ))

    def get_redis_presence(self) -> RedisPresenceStore:
        from supportchat.redis.presence import RedisPresenceStore

        return self._once("redis_presence", lambda: RedisPresenceStore(
            self.reactor, self.get_redis(), self.config.chat.presence_ttl, self.get_node_id(),
            self.config.redis.prefix,
        ))

    def get_redis_bus(self) -> RedisBus:
        """Deliveries through Redis; each one also teaches the chat store the
        conversation's latest seq."""
        def make() -> RedisBus:
            from supportchat.redis.bus import RedisBus

            bus = RedisBus(self.get_redis(), self.get_redis_presence(), self.get_node_id(), self.config.redis.prefix)
            store = self.get_redis_chat_store()
            bus.subscribe(lambda delivery: store.observe(delivery.frame))
            return bus

        return self._once("redis_bus", make)

    def get_monitor(self) -> ClusterMonitor:
        from supportchat.redis.node import ClusterMonitor

        return self._once("monitor", lambda: ClusterMonitor(
            self.reactor, self.get_redis(), self.get_metrics(), self.get_node_id(), list(self.roles),
            self.config.redis.prefix, self.config.redis.node_ttl, self.config.redis.backlog_high,
            self.config.redis.backlog_low, self.get_redis_chat_store() if "gateway" in self.roles else None,
        ))

    # -- one of two implementations ----------------------------------------
    def get_chat_store(self) -> ChatStore:
        """What the chat handler writes to: Redis first in Redis mode, SQL otherwise."""
        if self.redis_mode:
            return self.get_redis_chat_store()
        return self.get_store()

    def get_bus(self) -> MessageBus:
        if self.redis_mode:
            return self.get_redis_bus()
        return self._once("bus", LocalBus)

    def get_presence(self) -> PresenceStore:
        if self.redis_mode:
            return self.get_redis_presence()
        return self._once("presence", lambda: MemoryPresenceStore(self.reactor, self.config.chat.presence_ttl))

    # -- chat ----------------------------------------------------------------
    def get_registry(self) -> ConnectionRegistry:
        return self._once(
            "registry", lambda: ConnectionRegistry(on_change=self.get_metrics().connections.set)
        )

    def get_writer(self) -> MessageWriter:
        """The one path for a message: append, then publish (chat, workflow, bot)."""
        return self._once("writer", lambda: MessageWriter(
            self.reactor, self.get_chat_store(), self.get_bus(), self.get_metrics(), self.get_links()))

    # -- attachments -------------------------------------------------------
    def get_links(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """What adds fresh signed links to a message's attachments (None when off)."""
        return self.get_link_signer().decorate if self.config.attachments.enabled else None

    def get_link_signer(self) -> LinkSigner:
        from supportchat.attachments.links import LinkSigner

        return self._once("link_signer", lambda: LinkSigner(
            self.get_secret(), self.config.attachments.link_ttl, self.reactor.seconds, self.config.server.public_url))

    def get_attachment_pool(self) -> ThreadPool:
        """The threads that decode images and scan uploads (started by the service tree)."""
        from twisted.python.threadpool import ThreadPool

        return self._once("attachment_pool", lambda: ThreadPool(
            minthreads=0, maxthreads=self.config.attachments.workers, name="attachments"))

    def get_attachments(self) -> AttachmentService:
        """Uploads, claims by messages, downloads and the sweep (supportchat/attachments/)."""
        def make() -> AttachmentService:
            from supportchat.attachments.blobs import BlobStore, FileBlobStore
            from supportchat.attachments.models import Limits
            from supportchat.attachments.scan import ClamdScanner
            from supportchat.attachments.service import AttachmentService, Policy
            from supportchat.attachments.store import SqlAttachmentStore

            cfg = self.config.attachments
            pool = self.get_attachment_pool()

            def run(f: Callable[..., Any], *args: Any) -> Any:
                return deferToThreadPool(self.reactor, pool, f, *args)

            files = FileBlobStore(cfg.directory or os.path.join(self.config.server.data_dir, "attachments"), run)
            files.clean_spool(3600.0, self.reactor.seconds())  # what a crash left mid-upload
            blobs: BlobStore = files
            if cfg.storage == "s3":
                from treq.client import HTTPClient
                from twisted.web.client import Agent, HTTPConnectionPool

                from supportchat.attachments.s3 import S3BlobStore

                http = HTTPClient(Agent(self.reactor, pool=HTTPConnectionPool(self.reactor), connectTimeout=10))
                blobs = S3BlobStore(http, self.reactor, run, cfg.s3_endpoint, cfg.s3_bucket, cfg.s3_region,
                                    cfg.s3_access_key, cfg.s3_secret_key, cfg.s3_prefix, cfg.max_bytes,
                                    now=self.reactor.seconds)
            history = self.get_history_store()

            async def can_read(conversation_id: str, key: str, role: str) -> bool:
                return await history.visible_conversation(conversation_id, key, role) is not None

            return AttachmentService(
                self.reactor, SqlAttachmentStore(self.get_database()), blobs, run, files.spool_dir(),
                Limits(max_bytes=cfg.max_bytes, max_pixels=cfg.max_pixels, allowed_types=tuple(cfg.allowed_types),
                       thumbnail_size=cfg.thumbnail_size),
                ClamdScanner(cfg.scanner, cfg.scan_timeout) if cfg.scanner else None,
                self.get_link_signer(), self.get_metrics(), can_read,
                Policy(upload_rate=cfg.upload_rate, upload_burst=cfg.upload_burst, daily_bytes=cfg.daily_bytes,
                       per_conversation=cfg.per_conversation, orphan_grace=cfg.orphan_grace,
                       accept_unscanned=cfg.scanner_down == "accept"),
            )

        return self._once("attachments", make)

    def get_handler(self) -> FrameRouter:
        return self._once(
            "handler",
            lambda: build_router(
                clock=self.reactor,
                store=self.get_chat_store(),
                bus=self.get_bus(),
                presence=self.get_presence(),
                registry=self.get_registry(),
                metrics=self.get_metrics(),
                background=self.get_background(),
                config=self.config.chat,
                heartbeat=self.config.websocket.heartbeat,
                writer=self.get_writer(),
                queue=self.get_workflow() if self.config.workflow.enabled else None,
                attachments=self.get_attachments() if self.config.attachments.enabled else None,
                links=self.get_links(),
            ),
        )

    # -- support workflow ------------------------------------------------
    def get_workflow_store(self) -> SqlWorkflowStore:
        from supportchat.workflow.store import SqlWorkflowStore

        return self._once("workflow_store", lambda: SqlWorkflowStore(self.get_database()))

    def get_canned_store(self) -> SqlCannedStore:
        from supportchat.workflow.canned import SqlCannedStore

        return self._once("canned_store", lambda: SqlCannedStore(self.get_database()))

    def get_profiles(self) -> ProfileService:
        """Customer profiles with the [profile] keyring (docs/profiles.md)."""
        from supportchat.workflow.profiles import ProfileService

        return self._once("profiles", lambda: ProfileService.from_config(self.get_database(), self.config.profile))

    def get_workflow(self) -> WorkQueue:
        """The workflow's queue: assignment, positions, live inboxes, sweeps."""
        from supportchat.handlers.queue import WorkQueue

        return self._once("workflow", lambda: WorkQueue(
            self.reactor, self.get_chat_store(), self.get_workflow_store(), self.get_writer(), self.get_bus(),
            self.get_registry(), self.get_presence(), self.get_background(), self.config.workflow,
            bot_first=self.config.bot.enabled, hours=self.get_business_hours(),
        ))

    def get_staff_notices(self) -> StaffNotices:
        """What REST changes (agents, customer profiles) tell the live consoles."""
        from supportchat.handlers.notices import StaffNotices

        return self._once("staff_notices", lambda: StaffNotices(self.get_workflow()))

    def get_business_hours(self) -> BusinessHours:
        """The one definition of business hours: ``[bot] business_hours`` in ``[bot] timezone``."""
        return self._once("business_hours",
                          lambda: BusinessHours(self.config.bot.business_hours, self.config.bot.timezone))

    # -- webhooks ----------------------------------------------------------
    def get_webhook_store(self) -> SqlWebhookStore:
        """Endpoints, cursors and attempts (SQL, migration 012)."""
        from supportchat.webhooks.store import SqlWebhookStore

        return self._once("webhook_store", lambda: SqlWebhookStore(self.get_database()))

    def get_webhook_client(self) -> WebhookClient:
        """Outgoing webhook HTTP: treq on this reactor, behind the SSRF guard."""
        from supportchat.webhooks.client import TreqWebhookClient, parse_networks

        cfg = self.config.webhooks
        return self._once("webhook_client", lambda: TreqWebhookClient(
            self.reactor, parse_networks(cfg.allowed_private_networks), cfg.timeout))

    def get_webhook_dispatcher(self) -> WebhookDispatcher:
        """The service that delivers events from the log (service ``webhooks``)."""
        from supportchat.webhooks.dispatcher import WebhookDispatcher
        from supportchat.webhooks.store import SqlOutbox

        cfg = self.config.webhooks
        return self._once("webhook_dispatcher", lambda: WebhookDispatcher(
            self.reactor, self.get_webhook_store(), self.get_webhook_client(), self.get_metrics(),
            self.get_background(), poll_interval=cfg.poll_interval, retry_min_delay=cfg.retry_min_delay,
            retry_max_delay=cfg.retry_max_delay, retry_for=cfg.retry_for, concurrency=cfg.concurrency,
            outbox=SqlOutbox(self.get_database()), bus=None if self.redis_mode else self.get_bus()))

    # -- bot ---------------------------------------------------------------
    # -- email -------------------------------------------------------------
    def get_email_store(self) -> SqlEmailStore:
        """Email subscriptions and the email outbox (migration 016)."""
        from supportchat.email.store import SqlEmailStore

        return self._once("email_store", lambda: SqlEmailStore(self.get_database()))

    def get_email_sender(self) -> EmailSender:
        """Twisted's ESMTP client on this reactor, as ``[email]`` says."""
        from supportchat.email.sender import SmtpEmailSender

        cfg = self.config.email
        return self._once("email_sender", lambda: SmtpEmailSender(
            self.reactor, cfg.smtp_host, cfg.smtp_port, username=cfg.smtp_username, password=cfg.smtp_password,
            starttls=cfg.starttls, timeout=cfg.timeout))

    def email_public_url(self) -> str:
        return self.config.email.public_url or self.config.server.public_url

    def get_email_dispatcher(self) -> EmailDispatcher:
        """The service that queues and sends visitor emails (service ``email``)."""
        from supportchat.email.dispatcher import EmailDispatcher

        from supportchat.attachments.links import LinkSigner

        cfg = self.config.email
        # Attachment links that last as long as an email is read: the same
        # signature as the chat's links, a longer expiry.
        links = LinkSigner(self.get_secret(), cfg.attachment_link_ttl, self.reactor.seconds, self.email_public_url())
        return self._once("email_dispatcher", lambda: EmailDispatcher(
            self.reactor, self.get_email_store(), self.get_email_sender(), self.get_metrics(),
            self.get_background(), from_addr=cfg.from_address, public_url=self.email_public_url(),
            attachment_url=links.url if self.config.attachments.enabled else None,
            secret=self.get_secret(), poll_interval=cfg.poll_interval, retry_min_delay=cfg.retry_min_delay,
            retry_max_delay=cfg.retry_max_delay, retry_for=cfg.retry_for))

    def get_bot_states(self) -> BotStateStore:
        """Bot dialogue state: a Redis hash per conversation in Redis mode, SQL otherwise."""
        def make() -> BotStateStore:
            if self.redis_mode:
                from supportchat.bot.state import RedisBotStateStore

                return RedisBotStateStore(self.get_redis(), self.config.redis.prefix)
            from supportchat.bot.state import SqlBotStateStore

            return SqlBotStateStore(self.get_database())

        return self._once("bot_states", make)

    def get_bot_external(self) -> HttpExternalBot | None:
        """The external bot service client, or None without ``[bot] http_url``."""
        def make() -> HttpExternalBot | None:
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

    def get_knowledge(self) -> "Knowledge":
        """The bot's knowledge file, loaded once (the bot and the widget's
        configuration endpoint share it)."""
        from supportchat.bot.knowledge import load_knowledge

        return self._once("knowledge", lambda: load_knowledge(self.config.bot.knowledge))

    def get_bot(self) -> BotNode:
        def make() -> BotNode:
            from supportchat.bot.engine import Dialogue
            from supportchat.bot.node import BotNode

            cfg = self.config.bot
            return BotNode(
                self.reactor, self.get_chat_store(), self.get_writer(), self.get_bot_states(),
                Dialogue(self.get_knowledge(), cfg.threshold, cfg.max_misses),
                self.get_business_hours(), self.get_metrics(), cfg, self.get_bot_external(),
                float(self.config.chat.idempotency_window),
                on_handoff=self.get_workflow().on_handoff if self.config.workflow.enabled else None,
            )

        return self._once("bot", make)

    # -- tokens, origins, WebSocket, HTTP --------------------------------------
    def get_secret(self) -> str:
        return self._once(
            "secret", lambda: ensure_secret(self.config.auth, self.config.server.data_dir)[0]
        )

    def get_verifier(self) -> TokenVerifier:
        return self._once("verifier", lambda: TokenVerifier(self.config.auth, self.get_secret()))

    def get_issuer(self) -> TokenIssuer:
        return self._once("issuer", lambda: TokenIssuer(self.config.auth, self.get_secret()))

    def get_authenticator(self) -> Authenticator:
        """The one authentication path (token, then the staff account) of
        the WebSocket handshake and every REST route."""
        return self._once("authenticator", lambda: Authenticator(self.get_verifier(), self.get_workflow_store()))

    def get_password_hasher(self) -> PasswordHasher:
        """scrypt for logins and new passwords, a few at a time on the thread pool."""
        from supportchat.workflow.passwords import PasswordHasher

        def run(f: Callable[..., Any], *args: Any) -> Any:
            return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

        return self._once("password_hasher", lambda: PasswordHasher(
            run, self.config.auth.password_hash_concurrency, self.config.auth.password_hash_queue))

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
            slow = self.get_metrics().slow_consumer_disconnects
            factory.on_slow_consumer = lambda trigger: slow.labels(trigger).inc()
            factory.parse_hop = self.get_metrics().hop_parse
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

    def get_root_resource(self) -> Resource:
        """The URL tree (``supportchat.app.routes``)."""
        return self._once("root", lambda: build_root(self))

    def get_site(self) -> Site:
        def make() -> Site:
            site = build_site(self, self.get_root_resource(), redacting_log_formatter)
            site.displayTracebacks = False
            return site

        return self._once("site", make)
