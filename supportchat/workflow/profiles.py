"""Customer profiles: name, email, phone and integrator attributes, with
sensitive fields encrypted at rest per field (docs/profiles.md).

Crypto
    Each sensitive value is stored as ``v1:<kid>:<base64(nonce|ciphertext|tag)>``:
    AES-256-GCM (``cryptography``'s AESGCM, 96-bit random nonce) under the
    keyring key ``kid``, with associated data binding the customer id and
    the field name, so a ciphertext copied to another customer or field does
    not decrypt. An unknown kid, a tampered value or a wrong binding is a
    :class:`ProfileKeyError`, never a silent empty value.

Keyring
    ``{"active": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": ...}}``
    from ``[profile] keyring_file`` (JSON, or TOML for ``*.toml``) or inline
    in ``[profile] keyring`` (environment ``SUPPORTCHAT_PROFILE_KEYRING``).
    New values are encrypted under the active key; ``supportchat-admin
    rotate-profile-keys`` re-encrypts the rest. Parsing it lives in
    :mod:`supportchat.keyring` (the config loads it too).

Blind index
    ``phone_index`` is hex HMAC-SHA256 of the normalised phone number
    (``+`` and digits) under an index key derived with HKDF-SHA256 from a
    keyring key (info ``supportchat/profile/blind-index/v1``). Writes use
    the active key's index key; a search computes the index under every key
    in the keyring, so numbers written before a key switch stay findable
    until the rotation command recomputes them under the active key.

:class:`SqlProfileStore` and its in-memory twin :class:`MemoryProfileStore`
keep the same contract (tests/test_profiles.py); they only ever see
ciphertexts and index hashes. :class:`ProfileService` does the crypto.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred, succeed

from supportchat.config.model import ProfileConfig
from supportchat.keyring import Keyring, ProfileKeyError
from supportchat.storage.database import Cursor, Database
from supportchat.storage.models import customer_key
from supportchat.storage.outbox import add_outbox_txn

STANDARD = ("name", "email", "phone")
FIELD_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
VERSION = "v1"
MAX_ATTRIBUTES = 50
MAX_VALUE = 1000
MASK = "\u2022"


class ProfileInvalid(ValueError):
    """A profile field that does not validate (REST 400)."""


# -- keyring and crypto --------------------------------------------------------


def _ad(customer_id: str, name: str) -> bytes:
    return b"supportchat-profile-v1\x00" + customer_id.encode() + b"\x00" + name.encode()


def encrypt(keyring: Keyring, customer_id: str, name: str, value: str) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(keyring.keys[keyring.active]).encrypt(nonce, value.encode(), _ad(customer_id, name))
    return f"{VERSION}:{keyring.active}:{base64.b64encode(nonce + sealed).decode()}"


def key_id(ciphertext: str) -> str:
    parts = ciphertext.split(":", 2)
    if len(parts) != 3 or parts[0] != VERSION:
        raise ProfileKeyError("a stored profile value has an unknown format")
    return parts[1]


def decrypt(keyring: Keyring | None, customer_id: str, name: str, ciphertext: str) -> str:
    kid = key_id(ciphertext)
    if keyring is None:
        raise ProfileKeyError("no profile keyring is configured ([profile] keyring_file or SUPPORTCHAT_PROFILE_KEYRING)")
    if kid not in keyring.keys:
        raise ProfileKeyError(f"profile field {name!r} is encrypted under unknown key id {kid!r}")
    try:
        blob = base64.b64decode(ciphertext.split(":", 2)[2], validate=True)
        if len(blob) < 12 + 16:
            raise ValueError
        return AESGCM(keyring.keys[kid]).decrypt(blob[:12], blob[12:], _ad(customer_id, name)).decode()
    except (InvalidTag, ValueError, binascii.Error):
        raise ProfileKeyError(f"profile field {name!r} of a customer does not authenticate under key {kid!r} "
                              "(tampered, or moved from another customer or field)") from None


def normalise_phone(phone: str) -> str:
    """``+`` and the digits (a leading ``00`` is the international prefix)."""
    text = phone.strip()
    digits = "".join(c for c in text if c.isdigit() and c.isascii())
    if not text.startswith("+") and digits.startswith("00"):
        digits = digits[2:]
    return "+" + digits


def phone_index(keyring: Keyring, kid: str, phone: str) -> str:
    return hmac.new(keyring.index_key(kid), normalise_phone(phone).encode(), hashlib.sha256).hexdigest()


def mask(name: str, value: str) -> str:
    """Phones keep the country prefix and the last four digits
    (``+49•••••6789``); other fields show only bullets."""
    if name == "phone":
        p = normalise_phone(value)
        if len(p) > 8:
            return p[:3] + MASK * (len(p) - 7) + p[-4:]
        return MASK * len(p)
    return MASK * min(max(len(value), 3), 8)


# -- validation ------------------------------------------------------------------


def validate(data: Mapping[str, Any]) -> dict[str, Any]:
    """The profile fields in ``data`` ({name?, email?, phone?, attributes?}),
    checked; ProfileInvalid otherwise. Values are never in messages."""
    out: dict[str, Any] = {}
    for key in data:
        if key not in STANDARD and key != "attributes":
            raise ProfileInvalid(f"unknown profile field {key!r}; use name, email, phone and attributes")
    for key, limit in (("name", 200), ("email", 320), ("phone", 40)):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > limit:
            raise ProfileInvalid(f"{key} must be a string of at most {limit} characters")
        if key == "email" and value and ("@" not in value or any(c.isspace() for c in value)):
            raise ProfileInvalid("email must look like an email address")
        if key == "phone" and value and not 5 <= len(normalise_phone(value)) - 1 <= 20:
            raise ProfileInvalid("phone must have 5-20 digits")
        if value:
            out[key] = value
    attrs = data.get("attributes")
    if attrs is not None:
        if not isinstance(attrs, dict) or len(attrs) > MAX_ATTRIBUTES:
            raise ProfileInvalid(f"attributes must be an object with at most {MAX_ATTRIBUTES} keys")
        clean: dict[str, Any] = {}
        for k, v in attrs.items():
            if not FIELD_RE.match(k) or k in STANDARD:
                raise ProfileInvalid("attribute names are 1-64 letters, digits, _ . or - (not name, email, phone)")
            if isinstance(v, str) and len(v) > MAX_VALUE:
                raise ProfileInvalid(f"attribute values are at most {MAX_VALUE} characters")
            if not (v is None or isinstance(v, (str, int, float, bool))):
                raise ProfileInvalid("attribute values are strings, numbers, booleans or null")
            clean[k] = v
        out["attributes"] = clean
    return out


# -- storage -----------------------------------------------------------------------


@dataclass(frozen=True)
class StoredProfile:
    """What is stored: sensitive fields only as ciphertexts."""

    customer_id: str
    name: str = ""
    email: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    sensitive: dict[str, str] = field(default_factory=dict)
    phone_index: str | None = None
    updated_at: float = 0.0


class ProfileStore(Protocol):
    def get(self, customer_id: str) -> "Deferred[StoredProfile | None]": ...
    def put(self, profile: StoredProfile) -> "Deferred[None]":
        """Insert or replace."""
    def by_phone_index(self, indexes: list[str]) -> "Deferred[list[StoredProfile]]":
        """Profiles whose phone_index is one of ``indexes``, by customer id."""
    def batch_after(self, after: str, limit: int) -> "Deferred[list[StoredProfile]]":
        """Keyset pages by customer id (rotation)."""
    def rekey(self, customer_id: str, old: dict[str, str], new: dict[str, str],
              index: str | None) -> "Deferred[bool]":
        """Replace the ciphertexts if they are still ``old`` (else False)."""


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_COLS = "customer_id, name, email, attributes, sensitive_values, phone_index, updated_at"


def _row(r: Any) -> StoredProfile:
    return StoredProfile(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), r[5], float(r[6]))


def _get_txn(cur: Cursor, customer_id: str) -> StoredProfile | None:
    cur.execute(f"SELECT {_COLS} FROM customer_profiles WHERE customer_id = ?", (customer_id,))
    r = cur.fetchone()
    return None if r is None else _row(r)


def _put_txn(cur: Cursor, p: StoredProfile) -> None:
    before = _get_txn(cur, p.customer_id)
    values = (p.name, p.email, _dumps(p.attributes), _dumps(p.sensitive), p.phone_index, p.updated_at)
    if before is not None:
        cur.execute("UPDATE customer_profiles SET name = ?, email = ?, attributes = ?, sensitive_values = ?,"
                    " phone_index = ?, updated_at = ? WHERE customer_id = ?", (*values, p.customer_id))
    else:
        cur.execute(f"INSERT INTO customer_profiles ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", (p.customer_id, *values))
    if before is not None and (before.name, before.email, before.attributes, before.phone_index) == (
            p.name, p.email, p.attributes, p.phone_index):
        # Nothing an integrator sees changed (a token's profile claim on every
        # connection; sensitive values are re-encrypted each time, their blind
        # index tells whether the phone changed): no event.
        return
    # The webhook event, in the same transaction; sensitive fields never leave.
    add_outbox_txn(cur, "customer.updated", "", p.updated_at,
                   {"customer": {"id": p.customer_id}, "name": p.name, "email": p.email, "attributes": p.attributes,
                    "updated_at": p.updated_at}, subject=customer_key(p.customer_id))


def _by_index_txn(cur: Cursor, indexes: list[str]) -> list[StoredProfile]:
    if not indexes:
        return []
    marks = ", ".join("?" for _ in indexes)
    cur.execute(f"SELECT {_COLS} FROM customer_profiles WHERE phone_index IN ({marks}) ORDER BY customer_id",
                tuple(indexes))
    return [_row(r) for r in cur.fetchall()]


def _batch_txn(cur: Cursor, after: str, limit: int) -> list[StoredProfile]:
    cur.execute(f"SELECT {_COLS} FROM customer_profiles WHERE customer_id > ? ORDER BY customer_id LIMIT {int(limit)}",
                (after,))
    return [_row(r) for r in cur.fetchall()]


def _rekey_txn(cur: Cursor, customer_id: str, old: dict[str, str], new: dict[str, str], index: str | None) -> bool:
    cur.execute("UPDATE customer_profiles SET sensitive_values = ?, phone_index = ?"
                " WHERE customer_id = ? AND sensitive_values = ?",
                (_dumps(new), index, customer_id, _dumps(old)))
    return cur.rowcount > 0


class SqlProfileStore:
    """ProfileStore over :class:`Database` (table customer_profiles)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, customer_id: str) -> "Deferred[StoredProfile | None]":
        return self._db.run_interaction("profile_get", _get_txn, customer_id)

    def put(self, profile: StoredProfile) -> "Deferred[None]":
        return self._db.run_interaction("profile_put", _put_txn, profile)

    def by_phone_index(self, indexes: list[str]) -> "Deferred[list[StoredProfile]]":
        return self._db.run_interaction("profile_by_phone", _by_index_txn, indexes)

    def batch_after(self, after: str, limit: int) -> "Deferred[list[StoredProfile]]":
        return self._db.run_interaction("profile_batch", _batch_txn, after, limit)

    def rekey(self, customer_id: str, old: dict[str, str], new: dict[str, str],
              index: str | None) -> "Deferred[bool]":
        return self._db.run_interaction("profile_rekey", _rekey_txn, customer_id, old, new, index)


class MemoryProfileStore:
    """In-memory twin of :class:`SqlProfileStore`."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredProfile] = {}

    def get(self, customer_id: str) -> "Deferred[StoredProfile | None]":
        return succeed(self.rows.get(customer_id))

    def put(self, profile: StoredProfile) -> "Deferred[None]":
        self.rows[profile.customer_id] = replace(profile, attributes=dict(profile.attributes),
                                                 sensitive=dict(profile.sensitive))
        return succeed(None)

    def by_phone_index(self, indexes: list[str]) -> "Deferred[list[StoredProfile]]":
        return succeed([self.rows[k] for k in sorted(self.rows) if self.rows[k].phone_index in indexes])

    def batch_after(self, after: str, limit: int) -> "Deferred[list[StoredProfile]]":
        return succeed([self.rows[k] for k in sorted(self.rows) if k > after][:limit])

    def rekey(self, customer_id: str, old: dict[str, str], new: dict[str, str],
              index: str | None) -> "Deferred[bool]":
        row = self.rows.get(customer_id)
        if row is None or row.sensitive != old:
            return succeed(False)
        self.rows[customer_id] = replace(row, sensitive=dict(new), phone_index=index)
        return succeed(True)


# -- the service: crypto around the store --------------------------------------------


class ProfileService:
    """Encrypts sensitive fields on the way in, decrypts (and masks) on the
    way out."""

    @classmethod
    def from_config(cls, db: Database, cfg: ProfileConfig) -> "ProfileService":
        """Profiles in ``db`` with the configured keyring and fields (the
        server and supportchat-admin build it the same way)."""
        return cls(SqlProfileStore(db), Keyring.load(cfg.keyring, cfg.keyring_file), cfg.sensitive_fields,
                   cfg.show_sensitive_to_agents)

    def __init__(self, store: ProfileStore, keyring: Keyring | None, sensitive_fields: Iterable[str],
                 show_sensitive_to_agents: bool = False) -> None:
        self.store = store
        self.keyring = keyring
        self.sensitive = frozenset(sensitive_fields)
        self.show_sensitive_to_agents = show_sensitive_to_agents

    def _require_keyring(self) -> Keyring:
        if self.keyring is None:
            raise ProfileKeyError("sensitive profile fields need a keyring ([profile] keyring_file or "
                                  "SUPPORTCHAT_PROFILE_KEYRING); nothing was stored")
        return self.keyring

    def seal(self, customer_id: str, fields: Mapping[str, Any], now: float,
             base: StoredProfile | None = None) -> StoredProfile:
        """``fields`` (validated) as a StoredProfile; on ``base`` (merge)
        the given fields replace, attributes key by key."""
        name = base.name if base else ""
        email = base.email if base else ""
        attrs = dict(base.attributes) if base else {}
        sealed = dict(base.sensitive) if base else {}
        index = base.phone_index if base else None
        plain: dict[str, Any] = {k: v for k, v in fields.items() if k in STANDARD}
        plain.update(fields.get("attributes", {}))
        for key, value in plain.items():
            sealed.pop(key, None)
            attrs.pop(key, None)
            if key == "name":
                name = ""
            elif key == "email":
                email = ""
            if value is None:
                continue
            if key in self.sensitive:
                sealed[key] = encrypt(self._require_keyring(), customer_id, key, str(value))
            elif key == "name":
                name = value
            elif key == "email":
                email = value
            else:
                attrs[key] = value
        if "phone" in plain:
            index = None
            if plain["phone"] is not None and self.keyring is not None:
                index = phone_index(self.keyring, self.keyring.active, plain["phone"])
        return StoredProfile(customer_id, name, email, attrs, sealed, index, now)

    async def put(self, customer_id: str, fields: Mapping[str, Any], now: float, merge: bool = False) -> StoredProfile:
        base = await self.store.get(customer_id) if merge else None
        if not merge:
            fields = {"name": None, "email": None, "phone": None, **fields}
        profile = self.seal(customer_id, fields, now, base)
        await self.store.put(profile)
        return profile

    def view(self, profile: StoredProfile, reveal: bool) -> dict[str, Any]:
        """The wire form; sensitive fields decrypted, masked unless ``reveal``."""
        out: dict[str, Any] = {"customer_id": profile.customer_id, "name": profile.name, "email": profile.email,
                               "phone": profile.attributes.get("phone", ""),
                               "attributes": {k: v for k, v in profile.attributes.items() if k != "phone"},
                               "masked": [], "updated_at": profile.updated_at}
        for key in sorted(profile.sensitive):
            value = decrypt(self.keyring, profile.customer_id, key, profile.sensitive[key])
            if not reveal:
                value = mask(key, value)
                out["masked"].append(key)
            if key in STANDARD:
                out[key] = value
            else:
                out["attributes"][key] = value
        return out

    async def export(self, customer_id: str) -> dict[str, Any] | None:
        """A customer's profile for their data export: everything in clear
        when the keyring can decrypt it; otherwise the plain fields and the
        names of the fields that stay encrypted (``encrypted``)."""
        profile = await self.store.get(customer_id)
        if profile is None:
            return None
        try:
            return self.view(profile, reveal=True)
        except ProfileKeyError:
            plain = self.view(replace(profile, sensitive={}), reveal=True)
            plain["encrypted"] = sorted(profile.sensitive)
            return plain

    async def find_by_phone(self, phone: str) -> list[StoredProfile]:
        keyring = self._require_keyring()
        return await self.store.by_phone_index([phone_index(keyring, kid, phone) for kid in sorted(keyring.keys)])

    async def rotate(self, batch: int = 200) -> dict[str, int]:
        """Re-encrypt every sensitive field not under the active key and
        recompute stale phone indexes; idempotent. Counts by kind."""
        keyring = self._require_keyring()
        counts = {"profiles": 0, "reencrypted": 0, "reindexed": 0, "current": 0}
        after = ""
        while True:
            rows = await self.store.batch_after(after, batch)
            if not rows:
                return counts
            for row in rows:
                counts["profiles"] += 1
                new: dict[str, str] = {}
                for key, sealed in row.sensitive.items():
                    if key_id(sealed) == keyring.active:
                        new[key] = sealed
                        continue
                    new[key] = encrypt(keyring, row.customer_id, key,
                                       decrypt(keyring, row.customer_id, key, sealed))
                    counts["reencrypted"] += 1
                phone = row.attributes.get("phone")
                if "phone" in row.sensitive:
                    phone = decrypt(keyring, row.customer_id, "phone", row.sensitive["phone"])
                index = phone_index(keyring, keyring.active, phone) if isinstance(phone, str) and phone else None
                if new == row.sensitive and index == row.phone_index:
                    counts["current"] += 1
                    continue
                if index != row.phone_index:
                    counts["reindexed"] += 1
                await self.store.rekey(row.customer_id, row.sensitive, new, index)
            after = rows[-1].customer_id
