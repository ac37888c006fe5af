"""``supportchat-admin``: operator commands that run without a server.

    supportchat-admin token --user-id alice --role agent [--name Alice]
    supportchat-admin migrate
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.python import usage

from supportchat.config import Config, ConfigError, load_config
from supportchat.storage.models import ROLES


class _Common(usage.Options):
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["data-dir", "d", None, "Data directory (holds the generated secret)."],
    ]

    def load(self) -> Config:
        overrides: dict[str, dict[str, Any]] = {}
        if self["data-dir"]:
            overrides["server"] = {"data_dir": self["data-dir"]}
        return load_config(self["config"], overrides=overrides)


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


class AdminOptions(usage.Options):
    synopsis = "supportchat-admin <command> [options]"
    subCommands = [
        ["token", None, TokenOptions, "Print a signed access token."],
        ["migrate", None, MigrateOptions, "Apply pending database migrations."],
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
        from supportchat.auth import TokenIssuer, ensure_secret

        secret, _ = ensure_secret(config.auth, config.server.data_dir)
        token = TokenIssuer(config.auth, secret).mint(sub["user-id"], sub["role"], sub["ttl"], time.time(), sub["name"])
        sys.stdout.write(token + "\n")
        return 0
    from supportchat.tap import prepare_database

    version = prepare_database(config, migrate=True)
    sys.stdout.write(f"schema version {version}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
