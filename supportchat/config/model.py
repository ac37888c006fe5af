"""Config sections, their defaults, and the loader (TOML file + environment)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, get_type_hints

ENV_PREFIX = "SUPPORTCHAT_"
# Variables with these prefixes are not configuration (the admin command's
# password, switches of the test suite); every other SUPPORTCHAT_* variable
# must name a real section and key, so a typo is an error, not a no-op.
NOT_CONFIG_PREFIXES = ("SUPPORTCHAT_ADMIN_", "SUPPORTCHAT_TEST_")


class ConfigError(Exception):
    """A configuration problem, with the file, key and reason."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


@dataclass
class ServerConfig:
    """Process-level settings."""

    listen: list[str] = field(default_factory=lambda: ["tcp:8080:interface=127.0.0.1"])
    data_dir: str = "data"
    public_url: str = ""
    shutdown_timeout: float = 10.0
    nofile_limit: int = 65536
    node_id: str = ""
    # The HTTP edge (supportchat/http/site.py): a whole request within
    # request_timeout, keep-alive idle time, the default body limit.
    request_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_body_bytes: int = 65536
    # The reactor-stall watchdog (supportchat/watchdog.py): log a warning,
    # naming what ran, for a reactor turn of this many seconds or more.
    stall_warning: float = 0.1

    def validate(self, check: "_Checker") -> None:
        check.that(bool(self.listen), "listen", "at least one endpoint is required")
        check.that(self.shutdown_timeout > 0, "shutdown_timeout", "must be positive")
        check.that(self.nofile_limit >= 0, "nofile_limit", "must not be negative")
        check.that(self.request_timeout > 0, "request_timeout", "must be positive")
        check.that(self.idle_timeout > 0, "idle_timeout", "must be positive")
        check.that(0 <= self.max_body_bytes <= 64 * 1024 * 1024, "max_body_bytes", "must be between 0 and 67108864")
        check.that(0 <= self.stall_warning <= 60, "stall_warning", "must be between 0 and 60 (0: no warnings)")
        if self.public_url:
            check.that(
                self.public_url.startswith(("http://", "https://")),
                "public_url",
                "must start with http:// or https://",
            )


@dataclass
class DatabaseConfig:
    """Where conversations and messages are stored."""

    url: str = ""
    pool_size: int = 4
    sqlite_synchronous: str = "FULL"
    sqlite_checkpoint_interval: float = 0.5
    group_commit_max: int = 512
    auto_migrate: bool = True
    retry_seconds: float = 30.0
    retention_days: float = 0.0
    retention_batch: int = 500

    def validate(self, check: "_Checker") -> None:
        if self.url:
            check.that(
                self.url.startswith(("sqlite:", "postgresql://", "postgres://", "mysql://", "mariadb://")),
                "url",
                "scheme must be sqlite:, postgresql:// or mysql://",
            )
            if not self.url.startswith("sqlite:"):
                from supportchat.storage.engines import UnsupportedDatabase, engine_from_url

                try:
                    engine_from_url(self.url)
                except UnsupportedDatabase as e:
                    check.that(False, "url", str(e))
        check.that(1 <= self.pool_size <= 64, "pool_size", "must be between 1 and 64")
        check.that(self.retry_seconds >= 0, "retry_seconds", "must not be negative")
        check.that(self.retention_days >= 0, "retention_days", "must not be negative (0 keeps everything)")
        check.that(1 <= self.retention_batch <= 10000, "retention_batch", "must be between 1 and 10000")
        check.that(
            self.sqlite_synchronous.upper() in ("OFF", "NORMAL", "FULL", "EXTRA"),
            "sqlite_synchronous",
            "must be one of OFF, NORMAL, FULL, EXTRA",
        )
        check.that(self.group_commit_max >= 1, "group_commit_max", "must be at least 1")
        check.that(0 <= self.sqlite_checkpoint_interval <= 3600, "sqlite_checkpoint_interval",
                   "must be between 0 and 3600 seconds (0: checkpoints inside commits, SQLite's default)")


@dataclass
class AuthConfig:
    """JWT verification at the WebSocket handshake and REST calls."""

    jwt_secret: str = ""
    jwt_public_keys: dict[str, str] = field(default_factory=dict)
    audience: str = ""
    issuer: str = ""
    visitors_enabled: bool = True
    visitor_token_ttl: int = 30 * 86400
    handshake_rate: float = 20.0
    handshake_burst: int = 40
    leeway: int = 30
    # POST /api/v1/login: backoff after failures, per login and per address.
    login_free_failures: int = 5
    login_free_failures_per_address: int = 20
    login_backoff_initial: float = 1.0
    login_backoff_max: float = 300.0
    login_forget_after: float = 3600.0
    # scrypt (32 MiB each) on the thread pool: how many at once, how many waiting.
    password_hash_concurrency: int = 2
    password_hash_queue: int = 16

    def validate(self, check: "_Checker") -> None:
        check.that(self.login_free_failures >= 0, "login_free_failures", "must not be negative")
        check.that(self.login_free_failures_per_address >= 0, "login_free_failures_per_address",
                   "must not be negative")
        check.that(self.login_backoff_initial > 0, "login_backoff_initial", "must be positive")
        check.that(self.login_backoff_max >= self.login_backoff_initial, "login_backoff_max",
                   "must be at least login_backoff_initial")
        check.that(self.login_forget_after > 0, "login_forget_after", "must be positive")
        check.that(1 <= self.password_hash_concurrency <= 64, "password_hash_concurrency", "must be between 1 and 64")
        check.that(self.password_hash_queue >= 0, "password_hash_queue", "must not be negative")
        if self.jwt_secret:
            check.that(
                len(self.jwt_secret) >= 32,
                "jwt_secret",
                "must be at least 32 characters (HS256 needs a long random key)",
            )
        for kid, path in self.jwt_public_keys.items():
            check.that(
                os.path.isfile(path), f"jwt_public_keys.{kid}", f"no such file: {path}"
            )
        check.that(self.visitor_token_ttl > 0, "visitor_token_ttl", "must be positive")
        check.that(self.handshake_rate > 0, "handshake_rate", "must be positive")
        check.that(self.handshake_burst >= 1, "handshake_burst", "must be at least 1")
        check.that(self.leeway >= 0, "leeway", "must not be negative")


@dataclass
class WebSocketConfig:
    """The /ws endpoint: limits, compression, heartbeat, origins."""

    path: str = "/ws"
    max_message_bytes: int = 65536
    max_frame_bytes: int = 65536
    max_body_chars: int = 4000
    deflate: bool = True
    deflate_threshold: int = 1024
    deflate_window_bits: int = 11
    deflate_mem_level: int = 3
    deflate_no_context_takeover: bool = False
    auto_ping_interval: float = 30.0
    auto_ping_timeout: float = 10.0
    open_handshake_timeout: float = 10.0
    close_handshake_timeout: float = 5.0
    # Outgoing bound per connection (ws/protocol.py): bytes queued for a
    # peer that does not read, and how long its queue may stay undrained.
    send_buffer_limit: int = 65536
    send_timeout: float = 20.0
    allowed_origins: list[str] = field(default_factory=list)
    heartbeat: int = 30
    testee_path: str = ""
    testee_max_message_bytes: int = 16 * 1024 * 1024 + 1024

    def validate(self, check: "_Checker") -> None:
        check.that(self.path.startswith("/") and len(self.path) > 1, "path", "must start with / and name a path")
        check.that(1024 <= self.max_message_bytes <= 64 * 1024 * 1024, "max_message_bytes", "must be between 1024 and 67108864")
        check.that(1024 <= self.max_frame_bytes <= 64 * 1024 * 1024, "max_frame_bytes", "must be between 1024 and 67108864")
        check.that(1 <= self.max_body_chars <= self.max_message_bytes, "max_body_chars", "must be between 1 and max_message_bytes")
        check.that(self.deflate_threshold >= 0, "deflate_threshold", "must not be negative")
        check.that(9 <= self.deflate_window_bits <= 15, "deflate_window_bits", "must be between 9 and 15")
        check.that(1 <= self.deflate_mem_level <= 9, "deflate_mem_level", "must be between 1 and 9")
        check.that(self.auto_ping_interval >= 0, "auto_ping_interval", "must not be negative (0 turns it off)")
        check.that(self.auto_ping_timeout > 0, "auto_ping_timeout", "must be positive")
        check.that(self.open_handshake_timeout > 0, "open_handshake_timeout", "must be positive")
        check.that(self.close_handshake_timeout > 0, "close_handshake_timeout", "must be positive")
        check.that(self.send_buffer_limit >= 1024, "send_buffer_limit", "must be at least 1024")
        check.that(self.send_timeout > 0, "send_timeout", "must be positive")
        check.that(self.heartbeat > 0, "heartbeat", "must be positive")
        for i, origin in enumerate(self.allowed_origins):
            check.that("*" not in origin, f"allowed_origins[{i}]", "wildcards are not allowed; list each origin")
            check.that(origin.startswith(("http://", "https://")), f"allowed_origins[{i}]", "must be scheme://host[:port]")
        if self.testee_path:
            check.that(self.testee_path.startswith("/") and self.testee_path != self.path, "testee_path", "must start with / and differ from path")


@dataclass
class ChatConfig:
    """Conversation semantics."""

    idempotency_window: int = 86400
    sync_limit_max: int = 500
    presence_ttl: int = 35
    frame_rate: float = 50.0
    frame_burst: int = 100

    def validate(self, check: "_Checker") -> None:
        check.that(self.idempotency_window >= 300, "idempotency_window", "must be at least 300 seconds")
        check.that(1 <= self.sync_limit_max <= 10000, "sync_limit_max", "must be between 1 and 10000")
        check.that(self.presence_ttl > 0, "presence_ttl", "must be positive")
        check.that(self.frame_rate > 0, "frame_rate", "must be positive")
        check.that(self.frame_burst >= 1, "frame_burst", "must be at least 1")


@dataclass
class RedisConfig:
    """Redis for scale-out (empty url: the in-process bus)."""

    url: str = ""
    prefix: str = "sc:"
    backlog_high: int = 10000
    backlog_low: int = 5000
    retry_after: float = 2.0
    monitor_interval: float = 1.0
    node_ttl: float = 15.0
    persister_batch: int = 2000
    persister_claim_idle: float = 15.0
    persister_max_deliveries: int = 5
    stream_linger: float = 0.05
    stream_keep_for_others: float = 3600.0
    sentinels: list[str] = field(default_factory=list)
    sentinel_master: str = "mymaster"
    wait_replicas: int = 0
    wait_timeout: float = 0.5

    def validate(self, check: "_Checker") -> None:
        if self.url:
            check.that(self.url.startswith(("redis://", "rediss://")), "url", "must start with redis:// or rediss://")
        for i, address in enumerate(self.sentinels):
            host, _, port = address.rpartition(":")
            check.that(bool(host) and port.isdigit() and 0 < int(port) < 65536, f"sentinels[{i}]",
                       "must be host:port")
        if self.sentinels:
            check.that(bool(self.url), "url", "required with sentinels (its password and database are used; "
                       "its host is replaced by the primary the sentinels name)")
            check.that(not self.url.startswith("rediss://"), "url", "rediss:// is not supported with sentinels")
            check.that(bool(re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.sentinel_master)), "sentinel_master",
                       "must be the name of a master monitored by the sentinels")
        check.that(0 <= self.wait_replicas <= 16, "wait_replicas", "must be between 0 (do not wait) and 16")
        check.that(0 < self.wait_timeout <= 3.0, "wait_timeout", "must be positive and at most 3 seconds")
        check.that(bool(self.prefix) and " " not in self.prefix, "prefix", "must be a non-empty key prefix without spaces")
        check.that(self.backlog_high >= 1, "backlog_high", "must be at least 1")
        check.that(0 <= self.backlog_low < self.backlog_high, "backlog_low", "must be below backlog_high")
        check.that(self.retry_after > 0, "retry_after", "must be positive")
        check.that(self.monitor_interval > 0, "monitor_interval", "must be positive")
        check.that(self.node_ttl > self.monitor_interval, "node_ttl", "must exceed monitor_interval")
        check.that(1 <= self.persister_batch <= 10000, "persister_batch", "must be between 1 and 10000")
        check.that(self.persister_claim_idle > 0, "persister_claim_idle", "must be positive")
        check.that(0 <= self.stream_linger <= 5, "stream_linger", "must be between 0 and 5 seconds")
        check.that(self.persister_max_deliveries >= 1, "persister_max_deliveries", "must be at least 1")
        check.that(self.stream_keep_for_others >= 0, "stream_keep_for_others", "must be 0 (wait for ever) or positive")


@dataclass
class BotConfig:
    """The first-line bot (supportchat/bot/; knowledge: empty for the packaged default)."""

    enabled: bool = True
    knowledge: str = ""
    user_id: str = "bot"
    threshold: float = 72.0
    max_misses: int = 2
    max_age: float = 600.0
    business_hours: list[str] = field(default_factory=list)
    timezone: str = "UTC"
    claim_idle: float = 10.0
    max_deliveries: int = 5
    http_url: str = ""
    http_secret: str = ""
    http_timeout: float = 3.0
    http_retries: int = 1

    def validate(self, check: "_Checker") -> None:
        from supportchat.hours import parse_rule

        check.that(bool(self.user_id) and len(self.user_id) <= 128, "user_id", "must be 1-128 characters")
        check.that(0 < self.threshold <= 100, "threshold", "must be between 0 (exclusive) and 100")
        check.that(self.max_misses >= 1, "max_misses", "must be at least 1")
        check.that(self.max_age > 0, "max_age", "must be positive")
        for i, rule in enumerate(self.business_hours):
            try:
                parse_rule(rule)
            except ValueError as e:
                check.that(False, f"business_hours[{i}]", str(e))
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except Exception:
            check.that(False, "timezone", f"unknown time zone {self.timezone!r}")
        check.that(self.claim_idle > 0, "claim_idle", "must be positive")
        check.that(self.max_deliveries >= 1, "max_deliveries", "must be at least 1")
        if self.http_url:
            check.that(self.http_url.startswith(("https://", "http://")), "http_url", "must start with https:// or http://")
            check.that(bool(self.http_secret), "http_secret",
                       "required with http_url (set SUPPORTCHAT_BOT_HTTP_SECRET; never commit it)")
        check.that(self.http_timeout > 0, "http_timeout", "must be positive")
        check.that(0 <= self.http_retries <= 5, "http_retries", "must be between 0 and 5")


@dataclass
class WorkflowConfig:
    """Agents, the queue and automatic assignment (docs/workflow.md)."""

    enabled: bool = True
    default_capacity: int = 3
    offline_grace: float = 60.0
    requeue_offline_after: float = 300.0
    reopen_window: float = 600.0
    drain_interval: float = 5.0
    assign_batch: int = 50
    queue_updates_max: int = 100
    access_token_ttl: int = 900
    refresh_token_ttl: int = 14 * 86400
    after_hours_reply: bool = True
    after_hours_text: str = ("We are outside business hours. An agent will answer from {next_open}; "
                             "you may leave your message here.")

    def validate(self, check: "_Checker") -> None:
        check.that(0 <= self.default_capacity <= 1000, "default_capacity", "must be between 0 and 1000")
        check.that(self.offline_grace >= 0, "offline_grace", "must not be negative")
        check.that(self.requeue_offline_after >= 0, "requeue_offline_after", "must be 0 (never) or positive")
        check.that(self.reopen_window >= 0, "reopen_window", "must not be negative")
        check.that(self.drain_interval > 0, "drain_interval", "must be positive")
        check.that(1 <= self.assign_batch <= 1000, "assign_batch", "must be between 1 and 1000")
        check.that(self.queue_updates_max >= 0, "queue_updates_max", "must not be negative")
        check.that(self.access_token_ttl >= 60, "access_token_ttl", "must be at least 60 seconds")
        check.that(self.refresh_token_ttl > self.access_token_ttl, "refresh_token_ttl", "must exceed access_token_ttl")
        check.that(1 <= len(self.after_hours_text) <= 2000, "after_hours_text", "must be 1-2000 characters")


@dataclass
class ProfileConfig:
    """Customer profiles; sensitive fields encrypted at rest (docs/profiles.md)."""

    sensitive_fields: list[str] = field(default_factory=lambda: ["phone"])
    keyring_file: str = ""
    keyring: str = ""
    show_sensitive_to_agents: bool = False

    def validate(self, check: "_Checker") -> None:
        for i, name in enumerate(self.sensitive_fields):
            check.that(bool(re.match(r"^[A-Za-z0-9_.-]{1,64}$", name)), f"sensitive_fields[{i}]",
                       "must be a field name (name, email, phone or an attribute)")
        check.that(not (self.keyring and self.keyring_file), "keyring",
                   "set either keyring (SUPPORTCHAT_PROFILE_KEYRING) or keyring_file, not both")
        if self.keyring or self.keyring_file:
            from supportchat.keyring import Keyring, ProfileKeyError

            try:
                Keyring.load(self.keyring, self.keyring_file)
            except ProfileKeyError as e:
                check.that(False, "keyring" if self.keyring else "keyring_file", str(e))


# What [attachments] allowed_types may name (types the server can sniff).
ATTACHMENT_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf", "text/plain")


@dataclass
class AttachmentsConfig:
    """Images and files sent in chat (docs/protocol.md, "Attachments")."""

    enabled: bool = True
    # Where the bytes are stored: "filesystem" (directory; empty:
    # <data_dir>/attachments) or "s3" (an S3-compatible bucket).
    storage: str = "filesystem"
    directory: str = ""
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    max_bytes: int = 10 * 1024 * 1024
    # A whole upload request must arrive within this many seconds (instead
    # of [server] request_timeout, which is too short for 10 MiB on a slow uplink).
    upload_timeout: float = 300.0
    max_pixels: int = 24_000_000
    allowed_types: list[str] = field(default_factory=lambda: list(ATTACHMENT_TYPES))
    thumbnail_size: int = 320
    # Lifetime of the signed links minted in each response.
    link_ttl: float = 900.0
    # Threads decoding images and scanning (never the reactor thread).
    workers: int = 2
    # clamd's socket (unix:PATH or tcp:HOST:PORT); empty: no virus scan.
    scanner: str = ""
    scan_timeout: float = 30.0
    # When the scanner cannot answer: "refuse" the upload (503) or "accept" it flagged.
    scanner_down: str = "refuse"
    # Per user: uploads per second (token bucket) and bytes per 24 hours.
    upload_rate: float = 0.5
    upload_burst: int = 10
    daily_bytes: int = 200 * 1024 * 1024
    per_conversation: int = 200
    # Uploads no message has claimed are removed after this many seconds.
    orphan_grace: float = 86400.0

    def validate(self, check: "_Checker") -> None:
        check.that(1024 <= self.max_bytes <= 1024 * 1024 * 1024, "max_bytes", "must be between 1024 and 1073741824")
        check.that(self.storage in ("filesystem", "s3"), "storage", "must be filesystem or s3")
        if self.storage == "s3":
            check.that(self.s3_endpoint.startswith(("http://", "https://")), "s3_endpoint",
                       "must be the store's http:// or https:// URL")
            check.that(bool(self.s3_bucket), "s3_bucket", "is required with storage = s3")
            check.that(bool(self.s3_access_key and self.s3_secret_key), "s3_secret_key",
                       "s3_access_key and s3_secret_key are required with storage = s3")
        check.that(1 <= self.upload_timeout <= 3600, "upload_timeout", "must be between 1 and 3600 seconds")
        check.that(1 <= self.max_pixels <= 200_000_000, "max_pixels", "must be between 1 and 200000000")
        check.that(bool(self.allowed_types) and all(t in ATTACHMENT_TYPES for t in self.allowed_types),
                   "allowed_types", "must name some of " + ", ".join(ATTACHMENT_TYPES))
        check.that(16 <= self.thumbnail_size <= 2048, "thumbnail_size", "must be between 16 and 2048")
        check.that(10 <= self.link_ttl <= 7 * 86400, "link_ttl", "must be between 10 and 604800 seconds")
        check.that(1 <= self.workers <= 64, "workers", "must be between 1 and 64")
        check.that(self.scan_timeout > 0, "scan_timeout", "must be positive")
        check.that(self.scanner_down in ("refuse", "accept"), "scanner_down", "must be refuse or accept")
        if self.scanner:
            kind, _, rest = self.scanner.partition(":")
            check.that((kind == "unix" and bool(rest)) or (kind == "tcp" and rest.rpartition(":")[2].isdigit()),
                       "scanner", "must be unix:PATH or tcp:HOST:PORT (clamd's socket)")
        check.that(self.upload_rate > 0, "upload_rate", "must be positive")
        check.that(self.upload_burst >= 1, "upload_burst", "must be at least 1")
        check.that(self.daily_bytes >= self.max_bytes, "daily_bytes", "must be at least max_bytes")
        check.that(self.per_conversation >= 1, "per_conversation", "must be at least 1")
        check.that(self.orphan_grace >= 60, "orphan_grace", "must be at least 60 seconds")


def _check_retries(check: "_Checker", min_delay: float, max_delay: float, retry_for: float) -> None:
    """The back-off settings of an outbox (webhooks, email): min doubled up to max, for retry_for."""
    check.that(min_delay > 0, "retry_min_delay", "must be positive")
    check.that(max_delay >= min_delay, "retry_max_delay", "must be at least retry_min_delay")
    check.that(retry_for >= 0, "retry_for", "must not be negative")


@dataclass
class WebhooksConfig:
    """Signed webhooks from the durable log (docs/webhooks.md)."""

    # Networks (CIDR) that webhook targets may resolve to although they are
    # not public: loopback, private, link-local (cloud metadata), CGNAT.
    allowed_private_networks: list[str] = field(default_factory=list)
    # A failed delivery is retried after retry_min_delay seconds, doubling
    # up to retry_max_delay (with jitter), for retry_for seconds; then dead.
    retry_min_delay: float = 10.0
    retry_max_delay: float = 3600.0
    retry_for: float = 86400.0
    # Connecting, and the whole answer, each within this many seconds.
    timeout: float = 10.0
    # How often the dispatcher looks for new events in the log.
    poll_interval: float = 1.0
    # Conversations delivered at once per endpoint (each one in seq order).
    concurrency: int = 4
    # Whether this node runs the dispatcher (when it writes messages to SQL:
    # embedded, or the persister role); one node per cluster should.
    dispatch: bool = True

    def validate(self, check: "_Checker") -> None:
        import ipaddress

        for i, cidr in enumerate(self.allowed_private_networks):
            try:
                ipaddress.ip_network(cidr, strict=False)
                ok = True
            except ValueError:
                ok = False
            check.that(ok, f"allowed_private_networks[{i}]", "must be a network in CIDR form, like 10.0.0.0/8")
        _check_retries(check, self.retry_min_delay, self.retry_max_delay, self.retry_for)
        check.that(0 < self.timeout <= 300, "timeout", "must be between 0 and 300 seconds")
        check.that(0 < self.poll_interval <= 60, "poll_interval", "must be between 0 and 60 seconds")
        check.that(1 <= self.concurrency <= 64, "concurrency", "must be between 1 and 64")


@dataclass
class EmailConfig:
    """Email to visitors through SMTP: offline replies and transcripts (docs/email.md)."""

    enabled: bool = False
    smtp_host: str = "localhost"
    smtp_port: int = 25
    # AUTH when a username is set; the password only from the environment
    # (SUPPORTCHAT_EMAIL_SMTP_PASSWORD), never from a file, never logged.
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    # off: plain SMTP; opportunistic: STARTTLS when offered; required: refuse without it.
    starttls: str = "opportunistic"
    # Seconds for connecting, and for the whole SMTP exchange.
    timeout: float = 30.0
    # The From of every email, e.g. "Support <support@example.com>".
    from_address: str = ""
    # Base URL for the unsubscribe and attachment links (else server.public_url).
    public_url: str = ""
    # Attachment links in emails are signed and work this long (seconds).
    attachment_link_ttl: float = 604800.0
    # How often the outbox is looked at (seconds).
    poll_interval: float = 5.0
    # A failed send waits retry_min_delay seconds, doubling up to
    # retry_max_delay (with jitter), and is retried for retry_for seconds.
    retry_min_delay: float = 60.0
    retry_max_delay: float = 3600.0
    retry_for: float = 172800.0
    # Whether this node sends (the node that writes messages to SQL); one per cluster.
    dispatch: bool = True

    def validate(self, check: "_Checker") -> None:
        from email.utils import parseaddr

        check.that(bool(self.smtp_host.strip()), "smtp_host", "must not be empty")
        check.that(0 < self.smtp_port < 65536, "smtp_port", "must be a TCP port")
        check.that(self.starttls in ("off", "opportunistic", "required"), "starttls",
                   "must be off, opportunistic or required")
        check.that(not self.smtp_password or check.sources.get("email.smtp_password", "").startswith("environment"),
                   "smtp_password", "set it only through the environment variable SUPPORTCHAT_EMAIL_SMTP_PASSWORD")
        check.that(not self.smtp_password or bool(self.smtp_username), "smtp_password",
                   "needs smtp_username")
        check.that(0 < self.timeout <= 600, "timeout", "must be between 0 and 600 seconds")
        address = parseaddr(self.from_address)[1]
        check.that(not self.enabled or "@" in address, "from_address", "must be an email address when enabled")
        check.that(not self.public_url or self.public_url.startswith(("http://", "https://")), "public_url",
                   "must be an http(s) URL")
        check.that(0 < self.poll_interval <= 600, "poll_interval", "must be between 0 and 600 seconds")
        check.that(60 <= self.attachment_link_ttl <= 90 * 86400, "attachment_link_ttl",
                   "must be between 60 seconds and 90 days")
        _check_retries(check, self.retry_min_delay, self.retry_max_delay, self.retry_for)


@dataclass
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    bot: BotConfig = field(default_factory=BotConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    source: str = "<defaults>"

    def database_url(self) -> str:
        """The effective database URL (SQLite in the data directory by default)."""
        if self.database.url:
            return self.database.url
        return "sqlite:///" + os.path.join(self.server.data_dir, "supportchat.db")


SECTIONS = ("server", "database", "auth", "websocket", "chat", "redis", "bot", "workflow", "profile", "attachments",
            "webhooks", "email")


class _Checker:
    """Knows the section and where each key came from, so errors carry the
    full key and the file or environment variable that set it."""

    def __init__(self, source: str, section: str, sources: Mapping[str, str] | None = None) -> None:
        self.source = source
        self.section = section
        self.sources = sources or {}

    def that(self, ok: bool, key: str, reason: str) -> None:
        if not ok:
            full = f"{self.section}.{key}"
            option = re.split(r"[\[.]", key, maxsplit=1)[0]
            where = self.sources.get(f"{self.section}.{option}", self.source)
            raise ConfigError(where, full, reason)


def _coerce(source: str, key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field type, converting env strings."""
    origin = getattr(hint, "__origin__", None)
    if hint is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(source, key, f"expected a boolean, got {value!r}")
        if isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"expected a boolean, got {type(value).__name__}")
    if hint is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(source, key, f"expected an integer, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"expected an integer, got {type(value).__name__}")
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(source, key, f"expected a number, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(source, key, f"expected a number, got {type(value).__name__}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(source, key, f"expected a string, got {type(value).__name__}")
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError as e:
                    raise ConfigError(source, key, f"invalid JSON list: {e}") from None
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(source, key, "expected a list of strings")
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise ConfigError(source, key, f"invalid JSON object: {e}") from None
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
        raise ConfigError(source, key, "expected a table of strings")
    raise ConfigError(source, key, "unsupported option type")  # pragma: no cover


def _build_section(cls: type, data: Mapping[str, Any], sources: Mapping[str, str], source: str, section: str) -> Any:
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        full = f"{section}.{key}"
        where = sources.get(full, source)
        if key not in names:
            raise ConfigError(where, full, "unknown option")
        kwargs[key] = _coerce(where, full, value, hints[key])
    return cls(**kwargs)


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read ``path`` (or the defaults), apply ``SUPPORTCHAT_<SECTION>_<KEY>``
    environment variables and explicit ``overrides``, and validate it all."""
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    sources: dict[str, str] = {}
    source = path or "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as f:
                parsed = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(path, "-", "file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(path, "-", f"invalid TOML: {e}") from None
        for section, values in parsed.items():
            if section not in raw:
                raise ConfigError(path, section, "unknown section")
            if not isinstance(values, dict):
                raise ConfigError(path, section, "must be a table")
            raw[section].update(values)
    config_classes = _section_classes()
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(NOT_CONFIG_PREFIXES):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in raw or not key:
            raise ConfigError(f"environment {name}", section or name, f"unknown section; sections are {', '.join(SECTIONS)}")
        fields = {f.name for f in dataclasses.fields(config_classes[section])}
        if key not in fields:
            raise ConfigError(f"environment {name}", f"{section}.{key}", "unknown option")
        raw[section][key] = value
        sources[f"{section}.{key}"] = f"environment {name}"
    for section, values in (overrides or {}).items():
        raw[section].update(values)
        for key in values:
            sources[f"{section}.{key}"] = "command line"
    built: dict[str, Any] = {}
    for section in SECTIONS:
        cls = config_classes[section]
        obj = _build_section(cls, raw[section], sources, source, section)
        obj.validate(_Checker(source, section, sources))
        built[section] = obj
    ws, chat = built["websocket"], built["chat"]
    if ws.auto_ping_interval > 0:
        # Idle connections refresh their presence on each pong; presence that
        # lapsed under a connected agent would hand their work to the queue.
        _Checker(source, "chat", sources).that(chat.presence_ttl > ws.auto_ping_interval, "presence_ttl",
                                               "must exceed websocket.auto_ping_interval")
    return Config(source=source, **built)


def load_command_config(
    path: str | None,
    data_dir: str | None = None,
    listen: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """The configuration a command line asks for: ``--config`` (else the
    built-in defaults), then SUPPORTCHAT_* variables, then ``--data-dir``
    and ``--listen``. The server (``twistd supportchat ...``) and
    ``supportchat-admin`` both load it here, so they find the same data
    directory and secret."""
    server: dict[str, Any] = {}
    if listen:
        server["listen"] = list(listen)
    if data_dir:
        server["data_dir"] = data_dir
    return load_config(path, environ=environ, overrides={"server": server} if server else None)


def _section_classes() -> dict[str, type]:
    return {
        "server": ServerConfig,
        "database": DatabaseConfig,
        "auth": AuthConfig,
        "websocket": WebSocketConfig,
        "chat": ChatConfig,
        "redis": RedisConfig,
        "workflow": WorkflowConfig,
        "bot": BotConfig,
        "profile": ProfileConfig,
        "attachments": AttachmentsConfig,
        "webhooks": WebhooksConfig,
        "email": EmailConfig,
    }
