"""Password hashing with scrypt (memory-hard) from ``cryptography``.

Stored form: ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``, so the cost
can be raised later without invalidating existing hashes.
"""

from __future__ import annotations

import base64
import hmac
import os

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

LOG2_N, R, P, LENGTH = 15, 8, 1, 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, log2_n: int = LOG2_N) -> str:
    salt = os.urandom(16)
    digest = Scrypt(salt=salt, length=LENGTH, n=2 ** log2_n, r=R, p=P).derive(password.encode("utf-8"))
    return f"scrypt${log2_n}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True if ``password`` matches; False for any malformed or missing hash."""
    if not stored:
        return False
    try:
        kind, log2_n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = Scrypt(salt=base64.b64decode(salt), length=len(want), n=2 ** int(log2_n), r=int(r),
                     p=int(p)).derive(password.encode("utf-8"))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)
