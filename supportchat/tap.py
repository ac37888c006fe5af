"""The twistd entry point: ``twistd -n supportchat run [options]``.

This is the only module that touches the global reactor. The whole
configuration is validated in ``postOptions`` (an error names the file, the
key and the reason, and twistd exits non-zero) and the database is migrated
before any service starts.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService, ServiceMaker
from twisted.logger import Logger
from twisted.python import usage

from supportchat.config import Config, ConfigError, load_command_config
from supportchat.workers import as_reuseport, die_with_parent, reuseport_parser, worker_monitor

log = Logger()

# How every command line (the server's and supportchat-admin's) names its
# configuration file and data directory; both load them with
# load_command_config, so they find the same directory and secret.
CONFIG_OPTIONS = [
    ["config", "c", None, "TOML configuration file (default: the built-in defaults, as in conf/supportchat.toml)."],
    ["data-dir", "d", None, "Directory of the SQLite database and the generated JWT secret "
     "(default: [server] data_dir, SUPPORTCHAT_SERVER_DATA_DIR, else ./data)."],
]


class RunOptions(usage.Options):
    """Options of ``supportchat run``."""

    synopsis = "[--config FILE] [--listen ENDPOINT]... [--data-dir DIR]"
    optParameters = CONFIG_OPTIONS + [
        ["workers", "w", "1", "Processes serving the same ports (SO_REUSEPORT; needs Redis)."],
        ["worker-of", None, None, "(internal) this is a worker of that parent process id."],
    ]
    longdesc = "Run every role (WebSocket/HTTP gateway, storage and the bot) in one process."
    roles: tuple[str, ...] = ("gateway", "persister", "bot")

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.config: Config | None = None

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint string to listen on, e.g. tcp:8080:interface=127.0.0.1 (repeatable)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        try:
            workers = int(self["workers"])
        except ValueError:
            raise usage.UsageError("--workers must be a whole number") from None
        if not 1 <= workers <= 64:
            raise usage.UsageError("--workers must be between 1 and 64")
        self["workers"] = workers
        try:
            self.config = load_command_config(self["config"], self["data-dir"], self["listen"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None
        if "bot" in self.roles and self.config.bot.enabled:
            from supportchat.bot.knowledge import KnowledgeError, load_knowledge

            try:
                load_knowledge(self.config.bot.knowledge)
            except KnowledgeError as e:
                raise usage.UsageError(f"configuration error: bot.knowledge: {e}") from None
        if workers > 1:
            if not self.config.redis.url:
                raise usage.UsageError(
                    "configuration error: redis.url: --workers needs Redis (processes share no memory)"
                )
            self.config.server.listen = [as_reuseport(d) for d in self.config.server.listen]


class GatewayOptions(RunOptions):
    """Options of ``supportchat gateway``."""

    longdesc = "Serve WebSocket and HTTP only; persisters flush the Redis stream to SQL."
    roles = ("gateway",)


class PersisterOptions(RunOptions):
    """Options of ``supportchat persister``."""

    synopsis = "[--config FILE] [--listen ENDPOINT (health/metrics)]... [--data-dir DIR]"
    longdesc = "Flush the Redis stream to SQL. Listens (health, readiness, metrics) only with --listen."
    roles = ("persister",)
    command = "persister"

    def postOptions(self) -> None:
        listens = bool(self["listen"])
        super().postOptions()
        if not listens and self.config is not None:
            self.config.server.listen = []  # not the gateway's default port
        if self.config is not None and not self.config.redis.url:
            raise usage.UsageError(f"configuration error: redis.url: the {self.command} needs Redis (set [redis] url)")


class BotOptions(PersisterOptions):
    """Options of ``supportchat bot``."""

    longdesc = ("Answer new conversations as the first-line bot: consumes the Redis stream as consumer group"
                " 'bots'. Listens (health, readiness, metrics) only with --listen.")
    roles = ("bot",)
    command = "bot"

    def postOptions(self) -> None:
        super().postOptions()
        if self.config is not None and not self.config.bot.enabled:
            raise usage.UsageError("configuration error: bot.enabled: the bot command needs the bot enabled")


class Options(usage.Options):
    """``twistd supportchat <command>``."""

    synopsis = "<command> [options]"
    subCommands = [
        ["run", None, RunOptions, "Run the chat server (all roles in one process)."],
        ["gateway", None, GatewayOptions, "WebSocket/HTTP gateway only (Redis mode)."],
        ["persister", None, PersisterOptions, "Flush the Redis stream to SQL (Redis mode)."],
        ["bot", None, BotOptions, "First-line bot node consuming the Redis stream (Redis mode)."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required, e.g. 'twistd -n supportchat run'")


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` (up to the hard
    limit); returns the effective soft limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> tuple[int, int, int]:
    """Fewer, cheaper garbage collections for a long-running server.

    With 10,000 connections a full collection walks every object of every
    connection (0.4-0.7 s on the benchmark machine) and ran every 1-2 s under
    load, because objects waiting for a group commit lived long enough to be
    promoted. A large young-generation threshold lets such objects die young;
    full collections still run (no cyclic garbage is kept for ever), just
    rarely. Objects alive at start (imports, configuration) are frozen out of
    every collection."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return gc.get_threshold()


def prepare_database(config: Config, migrate: bool | None = None) -> int:
    """Before anything starts: migrate the database (``[database]
    auto_migrate``, or ``migrate=True`` from the admin command), or else
    check that its schema is the one this code needs. Exit non-zero with
    the reason (URL password redacted) if the database is unreachable or
    its schema unusable."""
    from supportchat.storage.database import SchemaError, check_schema_blocking, migrate_blocking
    from supportchat.storage.engines import DatabaseUnavailable, UnsupportedDatabase, engine_from_url, redact_url

    url = config.database_url()
    if migrate is None:
        migrate = config.database.auto_migrate
    applied: list[str] = []
    try:
        engine = engine_from_url(url, config.database.sqlite_synchronous)
        if migrate:
            version, applied = migrate_blocking(engine)
        else:
            version = check_schema_blocking(engine)
    except DatabaseUnavailable as e:
        sys.stderr.write(f"supportchat: database unavailable: {e}\n")
        raise SystemExit(1) from None
    except (UnsupportedDatabase, SchemaError) as e:
        sys.stderr.write(f"supportchat: database {redact_url(url)}: {e}\n")
        raise SystemExit(1) from None
    except Exception as e:
        sys.stderr.write(f"supportchat: database {redact_url(url)}: cannot open or migrate: {e}\n")
        raise SystemExit(1) from None
    for name in applied:
        log.info("Applied migration {name}", name=name)
    return version


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from supportchat.app.services import build_service
    from supportchat.server import SupportChatServer

    sub = options.subOptions
    config = sub.config
    assert config is not None
    os.makedirs(config.server.data_dir, exist_ok=True)
    limit = raise_nofile_limit(config.server.nofile_limit)
    log.info("Open-file limit is {limit}", limit=limit)
    version = prepare_database(config)
    log.info("Database schema version {version}", version=version)
    _exit_zero_after_drain(reactor)
    log.info("Garbage collection thresholds {thresholds}", thresholds=tune_gc())
    server = SupportChatServer(reactor, config, roles=sub.roles)
    server.get_secret()
    for desc in config.server.listen:
        log.info("Listening on {endpoint}", endpoint=desc)
    service = build_service(server)
    if sub["worker-of"]:
        die_with_parent(int(sub["worker-of"]))
    if sub["workers"] > 1:
        tail = [a for a in _worker_argv(sub)]
        monitor = worker_monitor(reactor, sub["workers"] - 1, tail, dict(os.environ))
        monitor.setServiceParent(service)
        log.info("Started {n} extra worker processes on the same ports", n=sub["workers"] - 1)
    return service


def _worker_argv(sub: RunOptions) -> list[str]:
    """The options a worker needs to serve what this process serves."""
    assert sub.config is not None
    out: list[str] = []
    if sub["config"]:
        out += ["--config", os.path.abspath(sub["config"])]
    out += ["--data-dir", os.path.abspath(sub.config.server.data_dir)]
    for desc in sub.config.server.listen:
        out += ["--listen", desc]
    return out


def _exit_zero_after_drain(reactor: Any) -> None:
    """twistd re-raises SIGTERM/SIGINT after shutdown, so the exit status
    would say "killed". Our shutdown drains first (sockets closed with 1001,
    commits finished), so once it has completed we report success: exit 0."""

    def forget_signal() -> None:
        if hasattr(reactor, "_exitSignal"):
            reactor._exitSignal = None

    reactor.addSystemEventTrigger("after", "shutdown", forget_signal)


service_maker = ServiceMaker(
    "supportchat",
    "supportchat.tap",
    "Self-hosted real-time customer-support chat server.",
    "supportchat",
)


__all__ = ["Options", "makeService", "reuseport_parser", "service_maker"]
