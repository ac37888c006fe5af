"""Tests for supportchat.config: defaults, the documented file, the
environment, type checks and the validation rules."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import tomllib

from twisted.trial.unittest import SynchronousTestCase

from supportchat.config import Config, ConfigError, load_config
from supportchat.config.model import SECTIONS
from supportchat.storage.engines import engine_from_url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTED = os.path.join(ROOT, "conf", "supportchat.toml")


class _TempDirMixin:
    def tempdir(self) -> str:
        path = tempfile.mkdtemp(prefix="supportchat-config-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def write(self, text: str, name: str = "supportchat.toml") -> str:
        path = os.path.join(self.tempdir(), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load_text(self, text: str, environ=None) -> Config:
        return load_config(self.write(text), environ={} if environ is None else environ)

    def assertFileError(self, text: str, key: str, environ=None) -> ConfigError:
        """Loading ``text`` fails with an error naming the file and ``key``."""
        path = self.write(text)
        e = self.assertRaises(ConfigError, load_config, path, {} if environ is None else environ)
        self.assertEqual(e.source, path)
        self.assertEqual(e.key, key)
        self.assertTrue(e.reason)
        message = str(e)
        self.assertIn(path, message)
        self.assertIn(key, message)
        self.assertIn(e.reason, message)
        return e

    def assertEnvError(self, environ: dict, key: str) -> ConfigError:
        e = self.assertRaises(ConfigError, load_config, None, environ)
        self.assertEqual(e.key, key)
        self.assertIn(key, str(e))
        return e


class DefaultsTests(_TempDirMixin, SynchronousTestCase):
    def test_no_file_gives_defaults(self):
        """Without a file or environment the configuration is the built-in defaults."""
        config = load_config(None, environ={})
        self.assertEqual(config, Config())
        self.assertEqual(config.source, "<defaults>")

    def test_defaults_listen_on_loopback_only(self):
        """Out of the box the server only listens on 127.0.0.1."""
        config = load_config(None, environ={})
        self.assertTrue(config.server.listen)
        for endpoint in config.server.listen:
            self.assertIn("interface=127.0.0.1", endpoint)

    def test_unrelated_environment_is_ignored(self):
        """Variables without the SUPPORTCHAT_ prefix do not change the configuration."""
        config = load_config(None, environ={"PATH": "/bin", "AUTH_JWT_SECRET": "x", "SUPPORTCHAT": "1"})
        self.assertEqual(config, Config())

    def test_documented_file_yields_defaults(self):
        """conf/supportchat.toml parses and gives exactly the built-in defaults."""
        config = load_config(DOCUMENTED, environ={})
        defaults = Config()
        for section in SECTIONS:
            self.assertEqual(getattr(config, section), getattr(defaults, section), section)
        self.assertEqual(config, dataclasses.replace(defaults, source=DOCUMENTED))

    def test_documented_file_lists_every_option(self):
        """conf/supportchat.toml shows every option of every section, as its header promises."""
        with open(DOCUMENTED, "rb") as f:
            documented = tomllib.load(f)
        defaults = Config()
        missing = []
        for section in SECTIONS:
            names = [fld.name for fld in dataclasses.fields(getattr(defaults, section))]
            shown = documented.get(section, {})
            missing.extend(f"{section}.{name}" for name in names if name not in shown)
        self.assertEqual(missing, [], "options missing from conf/supportchat.toml")

    def test_default_database_lives_in_data_dir(self):
        """With no database URL, SQLite is used at <data_dir>/supportchat.db (absolute or relative)."""
        for data_dir in (os.path.join(self.tempdir(), "state"), "relative/state"):
            config = load_config(None, environ={}, overrides={"server": {"data_dir": data_dir}})
            engine = engine_from_url(config.database_url())
            self.assertEqual(engine.name, "sqlite")
            self.assertEqual(engine.path, os.path.join(data_dir, "supportchat.db"))

    def test_explicit_database_url_wins(self):
        """A configured database URL is used as is."""
        config = load_config(None, environ={"SUPPORTCHAT_DATABASE_URL": "sqlite:///elsewhere.db"})
        self.assertEqual(config.database_url(), "sqlite:///elsewhere.db")


class FileTests(_TempDirMixin, SynchronousTestCase):
    def test_file_values_are_used(self):
        """Values in the file replace the defaults; unspecified keys keep theirs."""
        config = self.load_text('[chat]\nsync_limit_max = 123\n[server]\nnode_id = "n1"\n')
        self.assertEqual(config.chat.sync_limit_max, 123)
        self.assertEqual(config.server.node_id, "n1")
        self.assertEqual(config.chat.frame_burst, Config().chat.frame_burst)

    def test_integer_accepted_for_float(self):
        """A TOML integer is accepted where a number is expected and becomes a float."""
        config = self.load_text("[server]\nshutdown_timeout = 5\n")
        self.assertEqual(config.server.shutdown_timeout, 5.0)
        self.assertIsInstance(config.server.shutdown_timeout, float)

    def test_missing_file(self):
        """A config path that does not exist is an error naming the file."""
        path = os.path.join(self.tempdir(), "nope.toml")
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(e.source, path)
        self.assertIn(path, str(e))
        self.assertIn("not found", e.reason)

    def test_invalid_toml(self):
        """A file that is not TOML is an error naming the file."""
        path = self.write("[server\nlisten = \n")
        e = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(e.source, path)
        self.assertIn("invalid TOML", e.reason)

    def test_unknown_section(self):
        """An unknown section in the file is refused, naming file and section."""
        e = self.assertFileError("[nope]\nx = 1\n", "nope")
        self.assertIn("unknown", e.reason)

    def test_section_must_be_table(self):
        """A section given as a plain value is refused."""
        self.assertFileError("server = 1\n", "server")

    def test_unknown_key(self):
        """An unknown key in a known section is refused, naming file and section.key."""
        e = self.assertFileError("[websocket]\nmax_body_char = 10\n", "websocket.max_body_char")
        self.assertIn("unknown", e.reason)

    def test_string_for_int(self):
        """A string where an integer is expected is refused."""
        e = self.assertFileError('[chat]\nsync_limit_max = "many"\n', "chat.sync_limit_max")
        self.assertIn("integer", e.reason)

    def test_bool_for_int(self):
        """A boolean is not accepted as an integer."""
        self.assertFileError("[chat]\nsync_limit_max = true\n", "chat.sync_limit_max")

    def test_bool_for_float(self):
        """A boolean is not accepted as a number."""
        self.assertFileError("[auth]\nhandshake_rate = true\n", "auth.handshake_rate")

    def test_int_for_bool(self):
        """An integer is not accepted as a boolean."""
        e = self.assertFileError("[websocket]\ndeflate = 1\n", "websocket.deflate")
        self.assertIn("boolean", e.reason)

    def test_int_for_string(self):
        """An integer is not accepted as a string."""
        e = self.assertFileError("[server]\ndata_dir = 5\n", "server.data_dir")
        self.assertIn("string", e.reason)

    def test_list_of_non_strings(self):
        """A list must hold strings."""
        self.assertFileError("[server]\nlisten = [8080]\n", "server.listen")

    def test_table_of_non_strings(self):
        """A table of key files must map to strings."""
        self.assertFileError("[auth]\njwt_public_keys = { k1 = 1 }\n", "auth.jwt_public_keys")


class EnvironmentTests(_TempDirMixin, SynchronousTestCase):
    def test_str(self):
        """SUPPORTCHAT_AUTH_JWT_SECRET sets auth.jwt_secret."""
        secret = "s" * 40
        config = load_config(None, environ={"SUPPORTCHAT_AUTH_JWT_SECRET": secret})
        self.assertEqual(config.auth.jwt_secret, secret)

    def test_str_with_underscores_in_key(self):
        """SUPPORTCHAT_DATABASE_URL and multi-word keys like SUPPORTCHAT_SERVER_PUBLIC_URL are found."""
        config = load_config(None, environ={
            "SUPPORTCHAT_DATABASE_URL": "sqlite:///x.db",
            "SUPPORTCHAT_SERVER_PUBLIC_URL": "https://chat.example",
        })
        self.assertEqual(config.database.url, "sqlite:///x.db")
        self.assertEqual(config.server.public_url, "https://chat.example")

    def test_int(self):
        """An integer option is parsed from its environment string."""
        config = load_config(None, environ={"SUPPORTCHAT_CHAT_SYNC_LIMIT_MAX": "250"})
        self.assertEqual(config.chat.sync_limit_max, 250)
        self.assertIsInstance(config.chat.sync_limit_max, int)

    def test_float(self):
        """A number option is parsed from its environment string."""
        config = load_config(None, environ={
            "SUPPORTCHAT_AUTH_HANDSHAKE_RATE": "2.5",
            "SUPPORTCHAT_SERVER_SHUTDOWN_TIMEOUT": "3",
        })
        self.assertEqual(config.auth.handshake_rate, 2.5)
        self.assertEqual(config.server.shutdown_timeout, 3.0)
        self.assertIsInstance(config.server.shutdown_timeout, float)

    def test_bool(self):
        """Boolean options accept true/false, 1/0, yes/no and on/off in any case."""
        for text, expected in [("true", True), ("1", True), ("Yes", True), (" ON ", True),
                               ("false", False), ("0", False), ("no", False), ("OFF", False)]:
            config = load_config(None, environ={"SUPPORTCHAT_WEBSOCKET_DEFLATE_NO_CONTEXT_TAKEOVER": text})
            self.assertIs(config.websocket.deflate_no_context_takeover, expected, text)
            config = load_config(None, environ={"SUPPORTCHAT_WEBSOCKET_DEFLATE": text})
            self.assertIs(config.websocket.deflate, expected, text)

    def test_bad_bool(self):
        """An unrecognised boolean word is refused."""
        e = self.assertEnvError({"SUPPORTCHAT_WEBSOCKET_DEFLATE": "maybe"}, "websocket.deflate")
        self.assertIn("maybe", e.reason)

    def test_list_comma_form(self):
        """A list option accepts comma-separated values, trimmed, empty items dropped."""
        config = load_config(None, environ={
            "SUPPORTCHAT_SERVER_LISTEN": "tcp:8081:interface=127.0.0.1, unix:/tmp/chat.sock,",
        })
        self.assertEqual(config.server.listen, ["tcp:8081:interface=127.0.0.1", "unix:/tmp/chat.sock"])

    def test_list_json_form(self):
        """A list option accepts a JSON list of strings."""
        origins = ["https://shop.example", "https://www.shop.example"]
        config = load_config(None, environ={"SUPPORTCHAT_WEBSOCKET_ALLOWED_ORIGINS": json.dumps(origins)})
        self.assertEqual(config.websocket.allowed_origins, origins)

    def test_list_bad_json(self):
        """A list option that starts like JSON but is not JSON is refused."""
        self.assertEnvError({"SUPPORTCHAT_SERVER_LISTEN": '["tcp:1"'}, "server.listen")

    def test_list_json_non_strings(self):
        """A JSON list of non-strings is refused."""
        self.assertEnvError({"SUPPORTCHAT_SERVER_LISTEN": "[8080]"}, "server.listen")

    def test_dict_json(self):
        """A table option accepts a JSON object of strings."""
        pem = os.path.join(self.tempdir(), "k1.pem")
        with open(pem, "w") as f:
            f.write("not checked here\n")
        config = load_config(None, environ={"SUPPORTCHAT_AUTH_JWT_PUBLIC_KEYS": json.dumps({"k1": pem})})
        self.assertEqual(config.auth.jwt_public_keys, {"k1": pem})

    def test_dict_bad_json(self):
        """A table option that is not a JSON object is refused."""
        self.assertEnvError({"SUPPORTCHAT_AUTH_JWT_PUBLIC_KEYS": "k1=/x.pem"}, "auth.jwt_public_keys")
        self.assertEnvError({"SUPPORTCHAT_AUTH_JWT_PUBLIC_KEYS": '["/x.pem"]'}, "auth.jwt_public_keys")

    def test_env_beats_file(self):
        """The environment overrides the file."""
        config = self.load_text("[chat]\nsync_limit_max = 100\n",
                                environ={"SUPPORTCHAT_CHAT_SYNC_LIMIT_MAX": "200"})
        self.assertEqual(config.chat.sync_limit_max, 200)

    def test_overrides_beat_env(self):
        """Explicit overrides (the command line's --listen) beat the environment."""
        config = load_config(None, environ={"SUPPORTCHAT_SERVER_LISTEN": "tcp:1"},
                             overrides={"server": {"listen": ["tcp:2:interface=127.0.0.1"]}})
        self.assertEqual(config.server.listen, ["tcp:2:interface=127.0.0.1"])

    def test_non_config_variables_are_ignored(self):
        """SUPPORTCHAT_ADMIN_* (the admin command's password) and
        SUPPORTCHAT_TEST_* (test-suite switches) are not configuration; any
        other unknown SUPPORTCHAT_* section is still an error."""
        config = load_config(None, {"SUPPORTCHAT_ADMIN_PASSWORD": "x" * 12, "SUPPORTCHAT_TEST_REQUIRE_BROWSER": "1"})
        self.assertEqual(config.server.listen, ["tcp:8080:interface=127.0.0.1"])
        e = self.assertRaises(ConfigError, load_config, None, {"SUPPORTCHAT_TESTS_X": "1"})
        self.assertIn("SUPPORTCHAT_TESTS_X", str(e))

    def test_unknown_key(self):
        """An unknown key in the environment is refused, naming the variable and the key."""
        e = self.assertEnvError({"SUPPORTCHAT_WEBSOCKET_NOPE": "1"}, "websocket.nope")
        self.assertIn("SUPPORTCHAT_WEBSOCKET_NOPE", e.source)
        self.assertIn("SUPPORTCHAT_WEBSOCKET_NOPE", str(e))
        self.assertIn("unknown", e.reason)

    def test_unknown_key_with_file(self):
        """An unknown environment key is refused even when a valid file is given."""
        path = self.write("[chat]\nsync_limit_max = 100\n")
        e = self.assertRaises(ConfigError, load_config, path, {"SUPPORTCHAT_CHAT_NOPE": "1"})
        self.assertEqual(e.key, "chat.nope")
        self.assertIn("SUPPORTCHAT_CHAT_NOPE", str(e))

    def test_wrong_type_names_variable(self):
        """A badly typed environment value is reported against its variable, not the config file."""
        path = self.write("[chat]\nsync_limit_max = 100\n")
        e = self.assertRaises(ConfigError, load_config, path, {"SUPPORTCHAT_AUTH_LEEWAY": "soon"})
        self.assertEqual(e.key, "auth.leeway")
        self.assertIn("soon", e.reason)
        self.assertIn("SUPPORTCHAT_AUTH_LEEWAY", e.source)

    def test_bad_int(self):
        """A non-numeric integer option is refused."""
        self.assertEnvError({"SUPPORTCHAT_CHAT_SYNC_LIMIT_MAX": "lots"}, "chat.sync_limit_max")
        self.assertEnvError({"SUPPORTCHAT_CHAT_SYNC_LIMIT_MAX": "2.5"}, "chat.sync_limit_max")

    def test_bad_float(self):
        """A non-numeric number option is refused."""
        self.assertEnvError({"SUPPORTCHAT_AUTH_HANDSHAKE_RATE": "fast"}, "auth.handshake_rate")

    def test_env_values_are_validated(self):
        """Values from the environment go through the same validation as the file."""
        self.assertEnvError({"SUPPORTCHAT_AUTH_JWT_SECRET": "short"}, "auth.jwt_secret")


class ValidationTests(_TempDirMixin, SynchronousTestCase):
    def assertFileError(self, text: str, key: str, environ=None) -> ConfigError:
        """As for any file error, and the option must exist: the refusal comes from validation."""
        e = super().assertFileError(text, key, environ)
        self.assertNotEqual(e.reason, "unknown option")
        return e

    def test_presence_must_outlive_the_ping_interval(self):
        """presence_ttl not above auto_ping_interval is refused (connected idle agents would
        look gone); with the ping off, any positive TTL is accepted."""
        e = self.assertFileError("[chat]\npresence_ttl = 30\n[websocket]\nauto_ping_interval = 30.0\n", "chat.presence_ttl")
        self.assertIn("auto_ping_interval", e.reason)
        config = self.load_text("[chat]\npresence_ttl = 30\n[websocket]\nauto_ping_interval = 0\n")
        self.assertEqual(config.chat.presence_ttl, 30)

    def test_wildcard_origin_refused(self):
        """allowed_origins refuses a bare '*' wildcard."""
        e = self.assertFileError('[websocket]\nallowed_origins = ["*"]\n', "websocket.allowed_origins[0]")
        self.assertIn("wildcard", e.reason)

    def test_wildcard_host_origin_refused(self):
        """allowed_origins refuses wildcards inside an origin such as https://*.example.com."""
        self.assertFileError(
            '[websocket]\nallowed_origins = ["https://shop.example", "https://*.example.com"]\n',
            "websocket.allowed_origins[1]",
        )

    def test_origin_needs_scheme(self):
        """An allowed origin must be scheme://host[:port]."""
        self.assertFileError('[websocket]\nallowed_origins = ["shop.example"]\n', "websocket.allowed_origins[0]")

    def test_explicit_origin_accepted(self):
        """A plain https origin is accepted."""
        config = self.load_text('[websocket]\nallowed_origins = ["https://shop.example:8443"]\n')
        self.assertEqual(config.websocket.allowed_origins, ["https://shop.example:8443"])

    def test_short_jwt_secret(self):
        """A configured HS256 secret shorter than 32 characters is refused; 32 is accepted."""
        e = self.assertFileError('[auth]\njwt_secret = "%s"\n' % ("x" * 31), "auth.jwt_secret")
        self.assertIn("32", e.reason)
        config = self.load_text('[auth]\njwt_secret = "%s"\n' % ("x" * 32))
        self.assertEqual(len(config.auth.jwt_secret), 32)

    def test_public_key_file_must_exist(self):
        """A public key path that does not exist is refused, naming its kid."""
        missing = os.path.join(self.tempdir(), "missing.pem")
        e = self.assertFileError('[auth]\njwt_public_keys = { k1 = "%s" }\n' % missing, "auth.jwt_public_keys.k1")
        self.assertIn(missing, e.reason)

    def test_bad_database_scheme(self):
        """A database URL with an unknown scheme is refused."""
        self.assertFileError('[database]\nurl = "ftp://db.example/chat"\n', "database.url")

    def test_known_database_schemes_pass_validation(self):
        """sqlite:, postgresql:// and mysql:// URLs pass config validation."""
        for url in ("sqlite:///x.db", "postgresql://u@db/chat", "mysql://u@db/chat"):
            config = self.load_text('[database]\nurl = "%s"\n' % url)
            self.assertEqual(config.database.url, url)

    def test_pool_size_range(self):
        """database.pool_size must be between 1 and 64."""
        self.assertFileError("[database]\npool_size = 0\n", "database.pool_size")
        self.assertFileError("[database]\npool_size = 65\n", "database.pool_size")

    def test_sqlite_synchronous(self):
        """database.sqlite_synchronous must be a SQLite level."""
        self.assertFileError('[database]\nsqlite_synchronous = "fast"\n', "database.sqlite_synchronous")
        config = self.load_text('[database]\nsqlite_synchronous = "normal"\n')
        self.assertEqual(config.database.sqlite_synchronous, "normal")

    def test_body_longer_than_message(self):
        """websocket.max_body_chars may not exceed websocket.max_message_bytes."""
        self.assertFileError(
            "[websocket]\nmax_message_bytes = 2048\nmax_body_chars = 2049\n", "websocket.max_body_chars"
        )
        config = self.load_text("[websocket]\nmax_message_bytes = 2048\nmax_body_chars = 2048\n")
        self.assertEqual(config.websocket.max_body_chars, 2048)

    def test_body_zero(self):
        """websocket.max_body_chars must be at least 1."""
        self.assertFileError("[websocket]\nmax_body_chars = 0\n", "websocket.max_body_chars")

    def test_message_limits(self):
        """Message and frame size limits must lie between 1 KiB and 64 MiB."""
        self.assertFileError("[websocket]\nmax_message_bytes = 1023\nmax_body_chars = 10\n",
                             "websocket.max_message_bytes")
        self.assertFileError("[websocket]\nmax_frame_bytes = 67108865\n", "websocket.max_frame_bytes")

    def test_window_bits_range(self):
        """websocket.deflate_window_bits must be between 9 and 15."""
        self.assertFileError("[websocket]\ndeflate_window_bits = 8\n", "websocket.deflate_window_bits")
        self.assertFileError("[websocket]\ndeflate_window_bits = 16\n", "websocket.deflate_window_bits")
        for bits in (9, 15):
            config = self.load_text(f"[websocket]\ndeflate_window_bits = {bits}\n")
            self.assertEqual(config.websocket.deflate_window_bits, bits)

    def test_mem_level_range(self):
        """websocket.deflate_mem_level must be between 1 and 9."""
        self.assertFileError("[websocket]\ndeflate_mem_level = 0\n", "websocket.deflate_mem_level")
        self.assertFileError("[websocket]\ndeflate_mem_level = 10\n", "websocket.deflate_mem_level")

    def test_ws_path(self):
        """websocket.path must be an absolute path other than '/'."""
        self.assertFileError('[websocket]\npath = "ws"\n', "websocket.path")
        self.assertFileError('[websocket]\npath = "/"\n', "websocket.path")

    def test_testee_path_differs(self):
        """websocket.testee_path may not equal the chat path."""
        self.assertFileError('[websocket]\ntestee_path = "/ws"\n', "websocket.testee_path")

    def test_timeouts_positive(self):
        """Heartbeat and handshake timeouts must be positive; a ping interval of 0 turns pings off."""
        self.assertFileError("[websocket]\nheartbeat = 0\n", "websocket.heartbeat")
        self.assertFileError("[websocket]\nopen_handshake_timeout = 0\n", "websocket.open_handshake_timeout")
        self.assertFileError("[websocket]\nauto_ping_interval = -1\n", "websocket.auto_ping_interval")
        config = self.load_text("[websocket]\nauto_ping_interval = 0\n")
        self.assertEqual(config.websocket.auto_ping_interval, 0.0)

    def test_listen_required(self):
        """server.listen needs at least one endpoint."""
        self.assertFileError("[server]\nlisten = []\n", "server.listen")

    def test_public_url_scheme(self):
        """server.public_url must be http(s)."""
        self.assertFileError('[server]\npublic_url = "chat.example"\n', "server.public_url")

    def test_shutdown_timeout(self):
        """server.shutdown_timeout must be positive."""
        self.assertFileError("[server]\nshutdown_timeout = 0\n", "server.shutdown_timeout")

    def test_auth_numbers(self):
        """Auth rates, bursts, TTLs and leeway are range-checked."""
        self.assertFileError("[auth]\nleeway = -1\n", "auth.leeway")
        self.assertFileError("[auth]\nhandshake_rate = 0\n", "auth.handshake_rate")
        self.assertFileError("[auth]\nhandshake_burst = 0\n", "auth.handshake_burst")
        self.assertFileError("[auth]\nvisitor_token_ttl = 0\n", "auth.visitor_token_ttl")

    def test_chat_numbers(self):
        """Chat limits are range-checked."""
        self.assertFileError("[chat]\nsync_limit_max = 0\n", "chat.sync_limit_max")
        self.assertFileError("[chat]\nsync_limit_max = 10001\n", "chat.sync_limit_max")
        self.assertFileError("[chat]\nidempotency_window = 299\n", "chat.idempotency_window")
        self.assertFileError("[chat]\nframe_rate = 0\n", "chat.frame_rate")
        self.assertFileError("[chat]\nframe_burst = 0\n", "chat.frame_burst")

    def test_redis_scheme(self):
        """redis.url must be redis:// or rediss://."""
        self.assertFileError('[redis]\nurl = "http://cache:6379"\n', "redis.url")
        config = self.load_text('[redis]\nurl = "rediss://cache:6380/0"\n')
        self.assertEqual(config.redis.url, "rediss://cache:6380/0")

    def test_redis_sentinel(self):
        """Sentinels are host:port addresses, need url (password, database),
        exclude rediss:// and name a valid master; they can come from the
        environment as a comma-separated list."""
        url = 'url = "redis://:pw@sentinel/2"\n'
        config = self.load_text('[redis]\n' + url + 'sentinels = ["10.0.0.1:26379", "s2:26380"]\n'
                                'sentinel_master = "chat"\nwait_replicas = 1\n')
        self.assertEqual((config.redis.sentinels, config.redis.sentinel_master, config.redis.wait_replicas),
                         (["10.0.0.1:26379", "s2:26380"], "chat", 1))
        config = load_config(None, {"SUPPORTCHAT_REDIS_URL": "redis://x/0",
                                    "SUPPORTCHAT_REDIS_SENTINELS": "a:1, b:2,c:3"})
        self.assertEqual(config.redis.sentinels, ["a:1", "b:2", "c:3"])
        self.assertFileError('[redis]\n' + url + 'sentinels = ["10.0.0.1"]\n', "redis.sentinels[0]")
        self.assertFileError('[redis]\n' + url + 'sentinels = ["h:0"]\n', "redis.sentinels[0]")
        self.assertFileError('[redis]\nsentinels = ["h:26379"]\n', "redis.url")
        self.assertFileError('[redis]\nurl = "rediss://s/0"\nsentinels = ["h:26379"]\n', "redis.url")
        self.assertFileError('[redis]\n' + url + 'sentinels = ["h:26379"]\nsentinel_master = "a b"\n',
                             "redis.sentinel_master")

    def test_redis_wait_replicas(self):
        """wait_replicas is 0-16; wait_timeout positive and at most 3 s (below the reply timeout)."""
        self.assertFileError("[redis]\nwait_replicas = -1\n", "redis.wait_replicas")
        self.assertFileError("[redis]\nwait_replicas = 17\n", "redis.wait_replicas")
        self.assertFileError("[redis]\nwait_timeout = 0\n", "redis.wait_timeout")
        self.assertFileError("[redis]\nwait_timeout = 3.5\n", "redis.wait_timeout")
