"""Tests for supportchat-admin (supportchat.admin.main and python -m supportchat)."""

from __future__ import annotations

import io
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from typing import Any

import jwt
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from supportchat import admin
from supportchat.auth import AuthError, Principal, TokenVerifier, ensure_secret
from supportchat.config import AuthConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIGRATIONS = os.path.join(ROOT, "supportchat", "storage", "migrations")


def latest_migration() -> int:
    """The highest migration number shipped in supportchat/storage/migrations."""
    versions = [int(m.group(1)) for m in (re.match(r"^(\d+)_.*\.sql$", n) for n in os.listdir(MIGRATIONS)) if m]
    return max(versions)


def stored_secret(data_dir: str) -> str:
    with open(os.path.join(data_dir, "jwt_secret"), encoding="ascii") as f:
        return f.read().strip()


class _AdminCase(TestCase):
    def setUp(self):
        # The admin command reads SUPPORTCHAT_* from the environment; make
        # the tests independent of the developer's shell.
        for name in [n for n in os.environ if n.startswith("SUPPORTCHAT_")]:
            self.addCleanup(os.environ.__setitem__, name, os.environ.pop(name))
        self.data_dir = self.tempdir()

    def tempdir(self) -> str:
        path = tempfile.mkdtemp(prefix="supportchat-admin-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = admin.main(list(argv))
        return code, out.getvalue(), err.getvalue()


class TokenCommandTests(_AdminCase):
    def setUp(self):
        super().setUp()
        # The secret the server generates in its data directory at its first start.
        self.secret, _ = ensure_secret(AuthConfig(), self.data_dir)

    def test_token_verifies(self):
        """`token --user-id alice --role agent` prints a token the server accepts as alice/agent."""
        code, out, _ = self.run_main("token", "--user-id", "alice", "--role", "agent", "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        token = out.strip()
        self.assertEqual(out.count("\n"), 1)
        verifier = TokenVerifier(AuthConfig(), stored_secret(self.data_dir))
        self.assertEqual(verifier.verify(token), Principal("alice", "agent"))

    def test_token_default_ttl_is_a_day(self):
        """Without --ttl the token lives 86400 seconds."""
        code, out, _ = self.run_main("token", "--user-id", "alice", "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        claims = jwt.decode(out.strip(), options={"verify_signature": False})
        self.assertEqual(claims["exp"] - claims["iat"], 86400)
        self.assertEqual(claims["role"], "agent")

    def test_token_with_ttl_and_name(self):
        """--ttl and --name end up in the token."""
        code, out, _ = self.run_main("token", "--user-id", "bob", "--role", "admin", "--name", "Bob",
                                     "--ttl", "60", "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        token = out.strip()
        verifier = TokenVerifier(AuthConfig(), stored_secret(self.data_dir))
        self.assertEqual(verifier.verify(token), Principal("bob", "admin", "Bob"))
        claims = jwt.decode(token, options={"verify_signature": False})
        self.assertEqual(claims["exp"] - claims["iat"], 60)

    def test_token_secret_reused(self):
        """Two token commands on one data dir sign with the same stored secret."""
        self.run_main("token", "--user-id", "a", "--ttl", "60", "--data-dir", self.data_dir)
        first = stored_secret(self.data_dir)
        code, out, _ = self.run_main("token", "--user-id", "b", "--ttl", "60", "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        self.assertEqual(stored_secret(self.data_dir), first)
        self.assertEqual(TokenVerifier(AuthConfig(), first).verify(out.strip()).user_id, "b")

    def test_token_not_valid_with_other_secret(self):
        """The printed token is really signed: another secret refuses it."""
        code, out, _ = self.run_main("token", "--user-id", "a", "--ttl", "60", "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        self.assertRaises(AuthError, TokenVerifier(AuthConfig(), "z" * 48).verify, out.strip())

    def test_token_uses_config_audience_issuer(self):
        """With --config setting audience and issuer, the token carries them and verifies under that config."""
        conf = os.path.join(self.tempdir(), "chat.toml")
        with open(conf, "w") as f:
            f.write('[auth]\naudience = "supportchat"\nissuer = "https://chat.example"\n')
        code, out, _ = self.run_main("token", "--config", conf, "--user-id", "c", "--ttl", "60",
                                     "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        config = AuthConfig(audience="supportchat", issuer="https://chat.example")
        self.assertEqual(TokenVerifier(config, stored_secret(self.data_dir)).verify(out.strip()).user_id, "c")

    def test_bad_role(self):
        """An unknown --role exits 2 with a message and prints no token."""
        code, out, err = self.run_main("token", "--user-id", "alice", "--role", "root", "--data-dir", self.data_dir)
        self.assertEqual(code, 2)
        self.assertEqual(out, "")
        self.assertIn("--role", err)
        self.assertEqual(stored_secret(self.data_dir), self.secret)

    def test_missing_user_id(self):
        """Without --user-id the command exits 2."""
        code, out, err = self.run_main("token", "--ttl", "60", "--data-dir", self.data_dir)
        self.assertEqual(code, 2)
        self.assertEqual(out, "")
        self.assertIn("--user-id", err)

    def test_bad_ttl(self):
        """A non-positive --ttl exits 2."""
        code, out, _ = self.run_main("token", "--user-id", "a", "--ttl", "0", "--data-dir", self.data_dir)
        self.assertEqual((code, out), (2, ""))

    def test_no_command(self):
        """Without a command, or with an unknown one, the tool exits 2."""
        self.assertEqual(self.run_main()[0], 2)
        self.assertEqual(self.run_main("frobnicate")[0], 2)

    def test_config_error(self):
        """A bad --config exits 2 naming the file and key."""
        conf = os.path.join(self.tempdir(), "bad.toml")
        with open(conf, "w") as f:
            f.write("[websocket]\nmax_body_chars = 0\n")
        code, out, err = self.run_main("token", "--config", conf, "--user-id", "a", "--ttl", "60")
        self.assertEqual((code, out), (2, ""))
        self.assertIn(conf, err)
        self.assertIn("websocket.max_body_chars", err)


class SecretLookupTests(_AdminCase):
    """`token` finds the server's secret exactly as the server does, and never makes one."""

    timeout = 120

    def test_no_secret_in_data_dir(self):
        """With no secret in --data-dir: exit 1, the message names the file and the fixes,
        no token is printed and nothing is created."""
        code, out, err = self.run_main("token", "--user-id", "a", "--data-dir", self.data_dir)
        self.assertEqual((code, out), (1, ""))
        self.assertIn(os.path.join(os.path.abspath(self.data_dir), "jwt_secret"), err)
        for fix in ("--data-dir", "--config", "SUPPORTCHAT_AUTH_JWT_SECRET"):
            self.assertIn(fix, err)
        self.assertEqual(os.listdir(self.data_dir), [])

    def test_outside_the_checkout_without_a_secret(self):
        """`python -m supportchat token` in an empty directory (no --data-dir, no config) exits
        non-zero naming ./data/jwt_secret as an absolute path, and creates no file there."""
        cwd = os.path.realpath(self.tempdir())
        env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1",
               "HOME": cwd}
        d = getProcessOutputAndValue(sys.executable, ["-m", "supportchat", "token", "--user-id", "alice"],
                                     env=env, path=cwd, reactor=reactor)

        def check(result):
            out, err, code = result
            message = err.decode("utf-8", "replace")
            self.assertEqual((code, out), (1, b""), message)
            self.assertIn(os.path.join(cwd, "data", "jwt_secret"), message)
            self.assertIn("--data-dir", message)
            self.assertEqual(os.listdir(cwd), [])

        return d.addCallback(check)

    def test_data_dir_from_the_environment(self):
        """SUPPORTCHAT_SERVER_DATA_DIR (the server's variable) points the tool at the server's secret."""
        secret, _ = ensure_secret(AuthConfig(), self.data_dir)
        self.patch(os, "environ", dict(os.environ, SUPPORTCHAT_SERVER_DATA_DIR=self.data_dir))
        code, out, err = self.run_main("token", "--user-id", "e", "--ttl", "60")
        self.assertEqual(code, 0, err)
        self.assertEqual(TokenVerifier(AuthConfig(), secret).verify(out.strip()).user_id, "e")

    def test_data_dir_from_the_config_file(self):
        """[server] data_dir of the server's --config file is where the tool looks."""
        secret, _ = ensure_secret(AuthConfig(), self.data_dir)
        conf = os.path.join(self.tempdir(), "chat.toml")
        with open(conf, "w") as f:
            f.write(f'[server]\ndata_dir = "{self.data_dir}"\n')
        code, out, err = self.run_main("token", "--config", conf, "--user-id", "f", "--ttl", "60")
        self.assertEqual(code, 0, err)
        self.assertEqual(TokenVerifier(AuthConfig(), secret).verify(out.strip()).user_id, "f")

    def test_secret_from_the_environment(self):
        """SUPPORTCHAT_AUTH_JWT_SECRET signs the token; no file is read or written."""
        self.patch(os, "environ", dict(os.environ, SUPPORTCHAT_AUTH_JWT_SECRET="s" * 40))
        code, out, err = self.run_main("token", "--user-id", "g", "--ttl", "60", "--data-dir", self.data_dir)
        self.assertEqual(code, 0, err)
        self.assertEqual(TokenVerifier(AuthConfig(), "s" * 40).verify(out.strip()).user_id, "g")
        self.assertEqual(os.listdir(self.data_dir), [])

    @inlineCallbacks
    def test_token_accepted_by_a_running_server(self):
        """A server started with --data-dir generates its secret; `supportchat-admin token
        --data-dir` (run from another directory) prints a token that server's REST API accepts."""
        from tests.support import ServerProcess, free_port, http_client

        server = ServerProcess(self.data_dir, free_port())
        del server.env["SUPPORTCHAT_AUTH_JWT_SECRET"]  # the server makes its own, as in production
        self.addCleanup(server.kill)
        yield server.start()
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "jwt_secret")))
        env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1",
               "HOME": self.data_dir}
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "supportchat", "token", "--user-id", "alice", "--role", "agent", "--ttl", "300",
                             "--data-dir", self.data_dir],
            env=env, path=self.tempdir(), reactor=reactor)
        self.assertEqual(code, 0, err.decode("utf-8", "replace"))
        url = f"http://127.0.0.1:{server.port}/api/v1/inbox"
        r = yield http_client().get(url, headers={b"authorization": [b"Bearer " + out.strip()]})
        body = yield r.text()
        self.assertEqual(r.code, 200, body)
        forged = jwt.encode({"sub": "alice", "role": "agent", "exp": 2**40}, "x" * 48, algorithm="HS256")
        r = yield http_client().get(url, headers={b"authorization": [b"Bearer " + forged.encode()]})
        yield r.text()
        self.assertEqual(r.code, 401)
        server.signal("TERM")
        self.assertEqual((yield server.ended()), 0)


class MigrateCommandTests(_AdminCase):
    def schema(self) -> tuple[int, set[str]]:
        conn = sqlite3.connect(os.path.join(self.data_dir, "supportchat.db"))
        try:
            (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
        return version, tables

    def test_migrate_creates_database(self):
        """`migrate` creates the SQLite database in the data dir at the latest schema version."""
        code, out, _ = self.run_main("migrate", "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        version, tables = self.schema()
        self.assertEqual(version, latest_migration())
        self.assertEqual(out, f"schema version {version}\n")
        self.assertTrue({"conversations", "participants", "messages", "idempotency_keys"} <= tables)

    def test_migrate_idempotent(self):
        """Running `migrate` again changes nothing and keeps existing data."""
        self.assertEqual(self.run_main("migrate", "--data-dir", self.data_dir)[0], 0)
        conn = sqlite3.connect(os.path.join(self.data_dir, "supportchat.db"))
        conn.execute("INSERT INTO conversations (id, customer_id, status, created_at) VALUES ('c1', 'u1', 'open', 1.0)")
        conn.commit()
        conn.close()
        code, out, _ = self.run_main("migrate", "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        self.assertEqual(out, f"schema version {latest_migration()}\n")
        self.assertEqual(self.schema()[0], latest_migration())
        conn = sqlite3.connect(os.path.join(self.data_dir, "supportchat.db"))
        try:
            self.assertEqual(conn.execute("SELECT id FROM conversations").fetchall(), [("c1",)])
            self.assertEqual(conn.execute("SELECT COUNT(*) FROM schema_version").fetchone(), (1,))
        finally:
            conn.close()

    def test_migrate_refuses_newer_schema(self):
        """A database from a newer version makes `migrate` fail instead of touching it."""
        self.assertEqual(self.run_main("migrate", "--data-dir", self.data_dir)[0], 0)
        conn = sqlite3.connect(os.path.join(self.data_dir, "supportchat.db"))
        conn.execute("UPDATE schema_version SET version = ?", (latest_migration() + 1,))
        conn.commit()
        conn.close()
        e = self.assertRaises(SystemExit, self.run_main, "migrate", "--data-dir", self.data_dir)
        self.assertNotEqual(e.code, 0)
        self.assertIn("newer", sys.stderr.getvalue())
        self.assertEqual(self.schema()[0], latest_migration() + 1)


class ModuleEntryTests(_AdminCase):
    timeout = 120

    def test_python_m_supportchat(self):
        """`python -m supportchat token ...` prints a token the server accepts."""
        ensure_secret(AuthConfig(), self.data_dir)
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "PYTHONPATH": ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": self.data_dir,
        }
        args = ["-m", "supportchat", "token", "--user-id", "dora", "--role", "customer", "--ttl", "60",
                "--data-dir", self.data_dir]
        d = getProcessOutputAndValue(sys.executable, args, env=env, path=self.tempdir(), reactor=reactor)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode("utf-8", "replace"))
            verifier = TokenVerifier(AuthConfig(), stored_secret(self.data_dir))
            self.assertEqual(verifier.verify(out.decode("ascii").strip()), Principal("dora", "customer"))

        return d.addCallback(check)


class CreateAdminCommandTests(_AdminCase):
    """`create-admin`: the first admin account, password never on the command line."""

    def password_file(self, text: str) -> str:
        path = os.path.join(self.tempdir(), "pw")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        return path

    def stored(self, user_id: str) -> Any:
        from supportchat.storage.copy import _now
        from supportchat.storage.database import Database
        from supportchat.storage.engines import engine_from_url
        from supportchat.workflow.store import SqlWorkflowStore

        db = Database(engine_from_url("sqlite:///" + os.path.join(self.data_dir, "supportchat.db")), reactor=None,
                      threadless=True)
        db.start()
        try:
            return _now(SqlWorkflowStore(db).get_agent(user_id))
        finally:
            db.close()

    def test_password_file_creates_an_admin_that_can_log_in(self) -> Any:
        """--password-file: an admin row with a scrypt hash; the secret is printed nowhere;
        a second run for the same id is refused; the account logs in over REST."""
        from supportchat.workflow.passwords import verify_password

        secret = "first admin passphrase"
        code, out, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "boss",
                                       "--name", "The Boss", "--password-file", self.password_file(secret))
        self.assertEqual((code, err), (0, ""))
        self.assertNotIn(secret, out)
        agent = self.stored("boss")
        self.assertEqual((agent.role, agent.name, agent.login, agent.disabled), ("admin", "The Boss", "boss", False))
        self.assertTrue(verify_password(secret, agent.password_hash))
        code, out, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "boss",
                                       "--name", "Again", "--password-file", self.password_file(secret))
        self.assertEqual(code, 1)
        self.assertIn("exists", err)
        return self._login(secret)

    @inlineCallbacks
    def _login(self, secret: str) -> Any:
        import json

        from tests.support import http_client, start_server

        running = yield start_server(self, server={"data_dir": self.data_dir})
        r = yield http_client().request(
            "POST", f"http://127.0.0.1:{running.port}/api/v1/login", headers={b"content-type": [b"application/json"]},
            data=json.dumps({"login": "boss", "password": secret}).encode())
        body = json.loads((yield r.text()))
        self.assertEqual((r.code, body["agent"]["role"]), (200, "admin"))

    def test_environment_and_prompt(self) -> None:
        """SUPPORTCHAT_ADMIN_PASSWORD is used when set; otherwise a terminal prompt asked twice
        (different answers refused; no terminal: refused)."""
        from supportchat.workflow.passwords import verify_password

        self.patch(os, "environ", dict(os.environ, SUPPORTCHAT_ADMIN_PASSWORD="from the environment"))
        code, _, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "a1", "--name", "A")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(verify_password("from the environment", self.stored("a1").password_hash))
        os.environ.pop("SUPPORTCHAT_ADMIN_PASSWORD")
        import getpass

        answers = iter(["typed password", "typed password", "one password", "another one"])
        self.patch(getpass, "getpass", lambda prompt="": next(answers))

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        self.patch(sys, "stdin", Tty())
        code, _, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "a2", "--name", "B")
        self.assertEqual(code, 0, err)
        self.assertTrue(verify_password("typed password", self.stored("a2").password_hash))
        code, _, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "a3", "--name", "C")
        self.assertEqual(code, 2)
        self.assertIn("differ", err)
        self.patch(sys, "stdin", io.StringIO())
        code, _, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "a4", "--name", "D")
        self.assertEqual(code, 2)
        self.assertIsNone(self.stored("a4"))

    def test_password_argument_and_short_passwords_are_refused(self) -> None:
        """--password on the command line is a usage error; passwords under 8 characters are refused."""
        code, _, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "x", "--name", "X",
                                     "--password", "hunter2hunter2")
        self.assertEqual(code, 2)
        self.assertIn("refused", err)
        self.assertNotIn("hunter2hunter2", err)
        code, _, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "x", "--name", "X",
                                     "--password-file", self.password_file("short"))
        self.assertEqual(code, 2)
        self.assertIn("8 to 1024", err)
