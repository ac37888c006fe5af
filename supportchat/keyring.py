"""The customer-profile keyring: ``{"active": "k2", "keys": {"k1": "<base64
of 32 bytes>", ...}}`` from ``[profile] keyring`` or ``[profile]
keyring_file`` (docs/profiles.md). Loaded by the config (to reject a bad
keyring before anything starts) and used by :mod:`supportchat.workflow.profiles`
for the crypto; it depends on neither."""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
INDEX_INFO = b"supportchat/profile/blind-index/v1"


class ProfileKeyError(Exception):
    """A key problem: no keyring, an unknown key id, or a value that does
    not authenticate (tampered, or bound to another customer/field). The
    message never contains the value."""


@dataclass(frozen=True)
class Keyring:
    active: str
    keys: Mapping[str, bytes]

    @classmethod
    def parse(cls, data: Any, where: str) -> "Keyring":
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict) or not data["keys"]:
            raise ProfileKeyError(f"{where}: the keyring must be an object with \"active\" and \"keys\"")
        keys: dict[str, bytes] = {}
        for kid, value in data["keys"].items():
            if not isinstance(kid, str) or not KID_RE.match(kid):
                raise ProfileKeyError(f"{where}: key ids must be 1-32 letters, digits, _ . or -")
            try:
                raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ProfileKeyError(f"{where}: key {kid!r} must be the base64 of 32 random bytes")
            keys[kid] = raw
        active = data.get("active")
        if not isinstance(active, str) or active not in keys:
            raise ProfileKeyError(f"{where}: \"active\" must name one of the keys")
        return cls(active, keys)

    @classmethod
    def load(cls, inline: str = "", path: str = "") -> "Keyring | None":
        """From the inline JSON, else the file; None when neither is set."""
        if inline:
            try:
                data = json.loads(inline)
            except ValueError:
                raise ProfileKeyError("[profile] keyring: not valid JSON") from None
            return cls.parse(data, "[profile] keyring")
        if path:
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                data = tomllib.loads(raw.decode("utf-8")) if path.endswith(".toml") else json.loads(raw)
            except OSError as e:
                raise ProfileKeyError(f"{path}: cannot read the keyring: {e.strerror}") from None
            except ValueError:
                raise ProfileKeyError(f"{path}: the keyring is not valid JSON/TOML") from None
            return cls.parse(data, path)
        return None

    def index_key(self, kid: str) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INDEX_INFO).derive(self.keys[kid])
