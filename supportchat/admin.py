"""``supportchat-admin``: operator commands that run without a server.

    supportchat-admin token --user-id alice --role agent [--name Alice]
    supportchat-admin migrate
    supportchat-admin export --customer ID [--output FILE]
    supportchat-admin erase --customer ID --yes
    supportchat-admin copy-db --to postgresql://... [--from sqlite:///data/supportchat.db]
    supportchat-admin create-admin --user-id boss --name "The Boss" [--password-file FILE]
    supportchat-admin rotate-profile-keys [--batch N]

Every command takes the server's --config FILE and --data-dir DIR and reads
the same SUPPORTCHAT_* variables and defaults, through the server's own
loader, so it finds the server's database and JWT secret. ``token`` never
generates a secret: the server makes one in its data directory at its first
start, and a token signed with any other would be refused.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from twisted.python import usage

from supportchat.config import Config, ConfigError, load_command_config
from supportchat.storage.models import ROLES, customer_key, is_staff_id_allowed
from supportchat.tap import CONFIG_OPTIONS


class _Common(usage.Options):
    # The server's --config and --data-dir, loaded by the server's code:
    # the same file, SUPPORTCHAT_* variables and defaults as the server.
    optParameters = list(CONFIG_OPTIONS)

    def load(self) -> Config:
        return load_command_config(self["config"], self["data-dir"])


class TokenOptions(_Common):
    """Print a signed access token (agents use this until accounts exist)."""

    optParameters = _Common.optParameters + [
        ["user-id", "u", None, "User id (the token's sub claim)."],
        ["role", "r", "agent", f"One of {', '.join(ROLES)}."],
        ["name", "n", None, "Display name."],
        ["ttl", "t", 86400, "Lifetime in seconds.", int],  # type: ignore[list-item]
    ]

    def postOptions(self) -> None:
        if not self["user-id"]:
            raise usage.UsageError("--user-id is required")
        if self["role"] not in ROLES:
            raise usage.UsageError(f"--role must be one of {', '.join(ROLES)}")
        if self["ttl"] <= 0:
            raise usage.UsageError("--ttl must be positive")


class MigrateOptions(_Common):
    """Apply pending database migrations and print the schema version."""


class ExportOptions(_Common):
    """Print everything stored about one customer as JSON."""

    optParameters = _Common.optParameters + [
        ["customer", None, None, "The customer's user id."],
        ["output", "o", None, "Write to this file instead of standard output."],
    ]

    def postOptions(self) -> None:
        if not self["customer"]:
            raise usage.UsageError("--customer is required")


class EraseOptions(_Common):
    """Delete everything stored about one customer (in small batches)."""

    optParameters = _Common.optParameters + [["customer", None, None, "The customer's user id."]]
    optFlags = [["yes", "y", "Really erase (required)."]]

    def postOptions(self) -> None:
        if not self["customer"]:
            raise usage.UsageError("--customer is required")
        if not self["yes"]:
            raise usage.UsageError("erasing cannot be undone; add --yes")


class CopyDbOptions(_Common):
    """Copy a database (normally the embedded SQLite) into another one."""

    optParameters = _Common.optParameters + [
        ["from", None, None, "Source URL (default: the SQLite database in the data directory)."],
        ["to", None, None, "Target URL (default: [database] url when it is not SQLite)."],
        ["batch", None, 1000, "Rows per transaction.", int],  # type: ignore[list-item]
    ]


PASSWORD_ENV = "SUPPORTCHAT_ADMIN_PASSWORD"


class CreateAdminOptions(_Common):
    """Create the first admin account (login with it at POST /api/v1/login).

    The password is read from --password-file, else from the environment
    variable SUPPORTCHAT_ADMIN_PASSWORD, else prompted for (twice); never
    from the command line, where other users and shell history would see it."""

    optParameters = _Common.optParameters + [
        ["user-id", "u", None, "Account id (the tokens' sub claim)."],
        ["name", "n", None, "Display name."],
        ["login", "l", None, "Login name (default: the user id)."],
        ["team", None, "", "Team id (default: none)."],
        ["password-file", None, None, "Read the password from the first line of this file."],
    ]

    def postOptions(self) -> None:
        if not self["user-id"] or len(self["user-id"]) > 128:
            raise usage.UsageError("--user-id is required (1-128 characters)")
        if not self["name"]:
            raise usage.UsageError("--name is required")

    def opt_password(self, _: str) -> None:
        """Refused: pass the password with --password-file, SUPPORTCHAT_ADMIN_PASSWORD or the prompt."""
        raise usage.UsageError(
            f"a password on the command line is refused; use --password-file, {PASSWORD_ENV} or the prompt")


class RotateProfileKeysOptions(_Common):
    """Re-encrypt every sensitive profile field under the keyring's active
    key and recompute phone indexes (batched; running it again is harmless)."""

    optParameters = _Common.optParameters + [
        ["batch", None, 200, "Profiles per batch.", int],  # type: ignore[list-item]
    ]

    def postOptions(self) -> None:
        if not 1 <= self["batch"] <= 10000:
            raise usage.UsageError("--batch must be between 1 and 10000")


class AdminOptions(usage.Options):
    synopsis = "supportchat-admin <command> [options]"
    subCommands = [
        ["token", None, TokenOptions, "Print a signed access token."],
        ["migrate", None, MigrateOptions, "Apply pending database migrations."],
        ["export", None, ExportOptions, "Export everything stored about a customer as JSON."],
        ["erase", None, EraseOptions, "Erase a customer: conversations, messages, workflow records, profile."],
        ["copy-db", None, CopyDbOptions, "Copy the SQLite database into PostgreSQL or MySQL."],
        ["create-admin", None, CreateAdminOptions, "Create the first admin account."],
        ["rotate-profile-keys", None, RotateProfileKeysOptions, "Re-encrypt profiles under the active key."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")


def main(argv: list[str] | None = None) -> int:
    options = AdminOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
        config = options.subOptions.load()
    except (usage.UsageError, ConfigError) as e:
        sys.stderr.write(f"supportchat-admin: {e}\n{options}\n" if isinstance(e, usage.UsageError) else f"supportchat-admin: {e}\n")
        return 2
    sub = options.subOptions
    if options.subCommand == "token":
        from supportchat.auth import SecretNotFound, TokenIssuer, find_secret

        try:
            secret, _ = find_secret(config.auth, config.server.data_dir)
        except SecretNotFound as e:
            # Never generate one here: the server would not know it.
            sys.stderr.write(
                f"supportchat-admin: no JWT secret: [auth] jwt_secret (SUPPORTCHAT_AUTH_JWT_SECRET) is not set"
                f" and {e.path}: {e.reason}.\n"
                "The server generates that file in its data directory when it first starts. Point this command"
                " at the server's: --data-dir DIR (or SUPPORTCHAT_SERVER_DATA_DIR), --config FILE (the server's"
                " configuration), or set SUPPORTCHAT_AUTH_JWT_SECRET to the secret the server uses.\n")
            return 1
        if sub["role"] != "customer" and not is_staff_id_allowed(sub["user-id"]):
            sys.stderr.write("supportchat-admin: a staff user id may not begin with 'c:' (the customers' namespace)\n")
            return 2
        token = TokenIssuer(config.auth, secret).mint(sub["user-id"], sub["role"], sub["ttl"], time.time(), sub["name"])
        sys.stdout.write(token + "\n")
        return 0
    if options.subCommand == "create-admin":
        from supportchat.storage.engines import DatabaseUnavailable, UnsupportedDatabase

        try:
            return _create_admin(sub, config)
        except (DatabaseUnavailable, UnsupportedDatabase) as e:
            sys.stderr.write(f"supportchat-admin: {e}\n")
            return 1
    if options.subCommand == "rotate-profile-keys":
        from supportchat.storage.engines import DatabaseUnavailable, UnsupportedDatabase
        from supportchat.keyring import ProfileKeyError

        try:
            return _rotate_profile_keys(sub, config)
        except (DatabaseUnavailable, UnsupportedDatabase, ProfileKeyError) as e:
            sys.stderr.write(f"supportchat-admin: {e}\n")
            return 1
    if options.subCommand in ("export", "erase", "copy-db"):
        from supportchat.storage.engines import DatabaseUnavailable, UnsupportedDatabase

        try:
            return _data_command(options.subCommand, sub, config)
        except (DatabaseUnavailable, UnsupportedDatabase) as e:
            sys.stderr.write(f"supportchat-admin: {e}\n")
            return 1
    from supportchat.tap import prepare_database

    version = prepare_database(config, migrate=True)
    sys.stdout.write(f"schema version {version}\n")
    return 0


def _read_password(sub: Any) -> str | None:
    """From --password-file, the environment, or an interactive prompt
    (asked twice). None (with a message) when unusable."""
    import os

    if sub["password-file"]:
        try:
            with open(sub["password-file"], encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            sys.stderr.write(f"supportchat-admin: cannot read the password file: {e.strerror}\n")
            return None
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    else:
        import getpass

        if not sys.stdin.isatty():
            sys.stderr.write(f"supportchat-admin: no password: use --password-file, {PASSWORD_ENV} or a terminal\n")
            return None
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat the password: ") != password:
            sys.stderr.write("supportchat-admin: the passwords differ\n")
            return None
    if not 8 <= len(password) <= 1024:
        sys.stderr.write("supportchat-admin: the password must be 8 to 1024 characters\n")
        return None
    return password


@contextmanager
def _database(config: Config) -> Iterator[Any]:
    """The configured database, migrated, run inline (threadless) for one
    command; closed afterwards."""
    from supportchat.storage.database import Database
    from supportchat.storage.engines import engine_from_url
    from supportchat.tap import prepare_database

    prepare_database(config)
    db = Database(engine_from_url(config.database_url(), config.database.sqlite_synchronous), reactor=None,
                  threadless=True)
    db.start()
    try:
        yield db
    finally:
        db.close()


def _create_admin(sub: Any, config: Config) -> int:
    """Insert an admin account (scrypt hash) through the workflow store."""
    from supportchat.storage.copy import _now
    from supportchat.workflow.models import Agent, WorkflowError
    from supportchat.workflow.passwords import hash_password
    from supportchat.workflow.store import SqlWorkflowStore

    if not is_staff_id_allowed(sub["user-id"]):
        sys.stderr.write("supportchat-admin: a staff user id may not begin with 'c:' (the customers' namespace)\n")
        return 2
    password = _read_password(sub)
    if password is None:
        return 2
    with _database(config) as db:
        store = SqlWorkflowStore(db)
        login = sub["login"] or sub["user-id"]
        agent = Agent(sub["user-id"], login, sub["name"], "admin", team_id=sub["team"],
                      capacity=config.workflow.default_capacity, password_hash=hash_password(password),
                      created_at=time.time())
        try:
            _now(store.create_agent(agent))
        except WorkflowError as e:
            sys.stderr.write(f"supportchat-admin: {e}\n")
            return 1
        sys.stdout.write(f"created admin {agent.id} (login {login})\n")
        return 0


def _rotate_profile_keys(sub: Any, config: Config) -> int:
    """Re-encrypt under the active key; prints the counts."""
    from twisted.internet.defer import Deferred

    from supportchat.storage.copy import _now
    from supportchat.keyring import Keyring, ProfileKeyError
    from supportchat.workflow.profiles import ProfileService, SqlProfileStore

    cfg = config.profile
    keyring = Keyring.load(cfg.keyring, cfg.keyring_file)
    if keyring is None:
        raise ProfileKeyError("no profile keyring is configured ([profile] keyring_file or SUPPORTCHAT_PROFILE_KEYRING)")
    with _database(config) as db:
        service = ProfileService(SqlProfileStore(db), keyring, cfg.sensitive_fields)
        counts = _now(Deferred.fromCoroutine(service.rotate(sub["batch"])))
        sys.stdout.write(f"profiles {counts['profiles']}: {counts['reencrypted']} fields re-encrypted under "
                         f"{keyring.active}, {counts['reindexed']} phone indexes recomputed, "
                         f"{counts['current']} already current\n")
        return 0


def _data_command(command: str, sub: Any, config: Config) -> int:
    """export, erase and copy-db: SQL through a threadless Database."""
    import os

    from supportchat.storage.copy import CopyError, _now, copy_database
    from supportchat.storage.engines import engine_from_url
    from supportchat.storage.history import SqlHistoryStore, export_json, repeat_batches

    if command == "copy-db":
        source = sub["from"] or "sqlite:///" + os.path.join(config.server.data_dir, "supportchat.db")
        target = sub["to"] or ("" if config.database_url().startswith("sqlite:") else config.database_url())
        if not target:
            sys.stderr.write("supportchat-admin: copy-db needs --to URL (or a server [database] url)\n")
            return 2
        src, dst = engine_from_url(source), engine_from_url(target)
        if src.name == "sqlite" and not os.path.exists(getattr(src, "path", "")):
            sys.stderr.write(f"supportchat-admin: no SQLite database at {source}\n")
            return 1
        def progress(table: str, n: int) -> None:
            sys.stderr.write(f"{table}: {n} rows copied\n")

        try:
            counts = copy_database(src, dst, max(1, sub["batch"]), progress)
        except CopyError as e:
            sys.stderr.write(f"supportchat-admin: copy incomplete: {e}\n")
            return 1
        summary = ", ".join(f"{t} {n}" for t, n in counts.items())
        sys.stdout.write(f"copied {src.describe()} -> {dst.describe()}: {summary}\n")
        return 0
    with _database(config) as db:
        history = SqlHistoryStore(db)
        customer = sub["customer"]
        if command == "export":
            from twisted.internet.defer import Deferred

            from supportchat.http.admin_api import customer_export
            from supportchat.workflow.profiles import ProfileService

            profiles = ProfileService.from_config(db, config.profile)
            data = _now(Deferred.fromCoroutine(customer_export(history, profiles, customer)))
            data["exported_at"] = time.time()
            text = export_json(data) + "\n"
            if sub["output"]:
                with open(sub["output"], "w", encoding="utf-8") as f:
                    f.write(text)
            else:
                sys.stdout.write(text)
            return 0
        batch = config.database.retention_batch
        key = customer_key(customer)
        deleted = _now(repeat_batches(lambda: history.erase_customer_batch(key, batch, time.time())))
        sys.stdout.write(f"erased customer {customer}: {deleted} rows deleted\n")
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
