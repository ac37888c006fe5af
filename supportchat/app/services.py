"""The service tree of one node, built from the container's getters:

reactor watchdog -> database -> WAL checkpointer (SQLite) -> redis -> timers -> persister -> webhooks -> email -> chat -> bot
-> listeners,
started in that order and stopped one at a time in reverse (listeners
first, database then the watchdog last) by :class:`~supportchat.service.OrderedMultiService`.
Which parts exist depends on the node's roles and on Redis mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.application.strports import service as strports_service
from twisted.internet.defer import Deferred

from supportchat.service import ChatService, DatabaseService, OrderedMultiService
from supportchat.watchdog import ReactorWatchdog

if TYPE_CHECKING:
    from supportchat.server import SupportChatServer

PURGE_INTERVAL = 3600.0


def build_service(server: SupportChatServer) -> IService:
    """The node's top service (named ``supportchat``); children are named
    after what they run."""
    config, reactor, roles = server.config, server.reactor, server.roles
    gateway = "gateway" in roles
    top = OrderedMultiService()
    top.setName("supportchat")
    watchdog = ReactorWatchdog(reactor, server.get_metrics().reactor_lag.observe, config.server.stall_warning)
    watchdog.setName("reactor-watchdog")
    watchdog.setServiceParent(top)
    db_service = DatabaseService(server.get_database(), server.get_store())
    db_service.setName("database")
    db_service.setServiceParent(top)
    checkpointer = server.get_checkpointer()
    if checkpointer is not None:
        checkpointer.setName("sqlite-checkpoint")
        checkpointer.setServiceParent(top)
    if server.redis_mode:
        server.get_redis().service.setServiceParent(top)
        if gateway or server.bot_enabled:
            server.get_redis_subscriber().service.setServiceParent(top)
        _timer(top, "cluster-monitor", config.redis.monitor_interval, lambda: _monitor_tick(server), reactor)
    if gateway and config.attachments.enabled:
        from supportchat.attachments.service import ThreadPoolService

        pool = ThreadPoolService(server.get_attachment_pool())
        pool.setName("attachment-workers")
        pool.setServiceParent(top)
        _timer(top, "attachment-sweep", PURGE_INTERVAL, lambda: _sweep_tick(server), reactor)
    if gateway:
        _timer(top, "idempotency-purge", PURGE_INTERVAL, lambda: _purge_tick(server), reactor)
        if config.database.retention_days > 0:
            _timer(top, "retention", PURGE_INTERVAL, lambda: _retention_tick(server), reactor)
    if "persister" in roles and server.redis_mode:
        _add_persister(server, top)
    if server.runs_webhooks:
        dispatcher = server.get_webhook_dispatcher()
        dispatcher.setName("webhooks")
        dispatcher.setServiceParent(top)
    if server.runs_email:
        mailer = server.get_email_dispatcher()
        mailer.setName("email")
        mailer.setServiceParent(top)
    if gateway:
        chat = ChatService(
            reactor, server.get_chat_factory().close_all, server.get_handler(), server.get_background(),
            config.server.shutdown_timeout,
        )
        chat.setName("chat")
        chat.setServiceParent(top)
        if config.workflow.enabled:
            _timer(top, "workflow-drain", config.workflow.drain_interval, lambda: server.get_workflow().tick(), reactor)
    if server.bot_enabled:
        _bot_service(server).setServiceParent(top)
    for i, desc in enumerate(config.server.listen):
        listener = strports_service(desc, server.get_site(), reactor=reactor)
        listener.setName(f"listen-{i}")
        listener.setServiceParent(top)
    return top


def _timer(parent: MultiService, name: str, interval: float, tick: Callable[[], None], clock: Any) -> None:
    """Run ``tick`` now and every ``interval`` seconds on ``clock``, as the
    child ``name`` of ``parent``."""
    timer = TimerService(interval, tick)
    timer.clock = clock
    timer.setName(name)
    timer.setServiceParent(parent)


def _monitor_tick(server: SupportChatServer) -> None:
    monitor = server.get_monitor()
    server.get_background().run("cluster_monitor", lambda: Deferred.fromCoroutine(monitor.tick()))


def _purge_tick(server: SupportChatServer) -> None:
    server.get_background().run(
        "idempotency_purge", server.get_idempotency_store().purge, server.reactor.seconds()
    )


def _sweep_tick(server: SupportChatServer) -> None:
    attachments = server.get_attachments()
    server.get_background().run("attachment_sweep", lambda: Deferred.fromCoroutine(attachments.sweep()))


def _retention_tick(server: SupportChatServer) -> None:
    server.get_background().run("retention", server.get_retention().tick)


def _add_persister(server: SupportChatServer, top: MultiService) -> None:
    """Redis streams -> SQL, on its own Redis connection (started before it)."""
    from supportchat.redis.connection import RedisClient
    from supportchat.redis.persister import Persister
    from supportchat.redis.replicas import ReplicaWait

    config = server.config
    client = RedisClient.from_config(server.reactor, config.redis, name="redis-persister", reply_timeout=30.0)
    client.service.setServiceParent(top)
    persister = Persister(
        server.reactor, client, server.get_database(), server.get_metrics(), server.get_node_id(),
        prefix=config.redis.prefix, batch=config.redis.persister_batch,
        claim_idle_ms=int(config.redis.persister_claim_idle * 1000),
        max_deliveries=config.redis.persister_max_deliveries,
        idempotency_window=float(config.chat.idempotency_window),
        keep_for_others=config.redis.stream_keep_for_others,
        replica_wait=ReplicaWait(server.reactor, client, config.redis.wait_replicas, config.redis.wait_timeout,
                                 config.redis.retry_after, f"{config.redis.prefix}wait-fence")
        if config.redis.wait_replicas > 0 else None,
    )
    persister.linger = config.redis.stream_linger
    persister.setName("persister")
    persister.setServiceParent(top)


def _bot_service(server: SupportChatServer) -> IService:
    from supportchat.bot.node import BotService, LocalBotFeed, StreamBotConsumer

    node = server.get_bot()
    feed = LocalBotFeed(node, server.get_bus(), server.get_background(), messages=not server.redis_mode)
    service = BotService(server.reactor, node, feed, server.get_background(),
                         None if server.redis_mode else server.get_database(), server.config.server.shutdown_timeout)
    if server.redis_mode:
        from supportchat.redis.connection import RedisClient

        client = RedisClient.from_config(server.reactor, server.config.redis, name="redis-bot", reply_timeout=30.0)
        client.service.setServiceParent(service)
        consumer = StreamBotConsumer(
            server.reactor, client, node, server.get_node_id(), prefix=server.config.redis.prefix,
            claim_idle_ms=int(server.config.bot.claim_idle * 1000), max_deliveries=server.config.bot.max_deliveries,
        )
        consumer.linger = server.config.redis.stream_linger
        consumer.setServiceParent(service)
    service.setName("bot")
    return service
