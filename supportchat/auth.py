"""JWT verification at the handshake, token minting, and the secret bootstrap."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
from twisted.logger import Logger

from supportchat.config import AuthConfig
from supportchat.storage.models import ROLES, is_staff_id_allowed, principal_key
from supportchat.wire.frames import text_problem

if TYPE_CHECKING:
    from supportchat.workflow.models import Agent

log = Logger()

ASYMMETRIC_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"]
SECRET_FILE = "jwt_secret"


@dataclass(frozen=True)
class Principal:
    """The authenticated user behind a connection or request: ``user_id``
    is the token's ``sub`` (what clients see), :attr:`key` the namespaced
    identity everything inside the server uses."""

    user_id: str
    role: str
    name: str | None = None
    # The token's "iat", when it has one (revocation: tokens issued before
    # an account was disabled are refused).
    issued_at: float | None = field(default=None, compare=False)
    # A customer token's "profile" object claim (integrators pass the
    # customer's profile this way; stored at WebSocket open).
    profile: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The principal key (``storage.models.principal_key``): a customer
        and an agent with the same ``sub`` are different principals."""
        return principal_key(self.role, self.user_id)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.user_id, "role": self.role}
        if self.name:
            out["name"] = self.name
        return out


class AuthError(Exception):
    """A token was refused; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def account_refusal(agent: Agent | None, principal: Principal) -> AuthError | None:
    """Why ``agent``'s account refuses ``principal``'s token, or None (no
    account: a customer, or a staff token minted by ``supportchat-admin
    token`` or an integrator before its first connection). The reasons are
    ``account_disabled``, ``revoked`` (issued before the account's tokens
    were revoked) and ``role_changed`` (the token's role is not the
    account's any more)."""
    if agent is None:
        return None
    if agent.disabled:
        return AuthError("account_disabled", "this account is disabled")
    # ``iat`` is in whole seconds: a token of the very second of the
    # revocation is refused too (a fresh sign-in in that second is refused
    # for the rest of it; one a second later works).
    valid_after = agent.tokens_valid_after
    if valid_after and (principal.issued_at is None or principal.issued_at < valid_after):
        return AuthError("revoked", "this token was revoked; sign in again")
    if agent.role != principal.role:
        return AuthError("role_changed", "this account's role changed; sign in again")
    return None


class SecretNotFound(Exception):
    """No HS256 secret is configured and none is stored at ``path``."""

    def __init__(self, path: str, reason: str, replaceable: bool = True) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        # Missing or too short (the server generates a new one); an
        # unreadable file is never replaced.
        self.replaceable = replaceable


def find_secret(config: AuthConfig, data_dir: str) -> tuple[str, str | None]:
    """The HS256 secret the server uses, without ever creating one: the
    configured ``[auth] jwt_secret`` (SUPPORTCHAT_AUTH_JWT_SECRET), else the
    one stored in the data directory. Returns it and the file used, if any;
    raises :class:`SecretNotFound` (with the absolute path looked at)."""
    if config.jwt_secret:
        return config.jwt_secret, None
    path = os.path.abspath(os.path.join(data_dir, SECRET_FILE))
    try:
        with open(path, encoding="ascii") as f:
            secret = f.read().strip()
    except FileNotFoundError:
        raise SecretNotFound(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SecretNotFound(path, f"unreadable: {getattr(e, 'strerror', None) or e}", replaceable=False) from None
    if len(secret) < 32:
        raise SecretNotFound(path, "too short to be a generated secret")
    return secret, path


def ensure_secret(config: AuthConfig, data_dir: str) -> tuple[str, str | None]:
    """The HS256 secret: configured, or read from (or, the first time,
    generated into) the data directory with mode 0600. Only the server calls
    this; the admin tool uses :func:`find_secret`. Returns it and the file
    used, if any."""
    try:
        return find_secret(config, data_dir)
    except SecretNotFound as e:
        if not e.replaceable:
            raise
    path = os.path.join(data_dir, SECRET_FILE)
    os.makedirs(data_dir, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
    log.info("Generated a new JWT signing secret in {path} (mode 0600)", path=path)
    return secret, path


class TokenVerifier:
    """Checks signature, expiry, audience, issuer and our required claims."""

    def __init__(self, config: AuthConfig, secret: str) -> None:
        self._config = config
        self._secret = secret
        self._public_keys: dict[str, str] = {}
        for kid, path in config.jwt_public_keys.items():
            with open(path, encoding="ascii") as f:
                self._public_keys[kid] = f.read()

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed", "token is not a JWT") from None
        alg = header.get("alg")
        kid = header.get("kid")
        key: Any
        if kid is not None and kid in self._public_keys:
            key, algorithms = self._public_keys[kid], ASYMMETRIC_ALGORITHMS
        elif alg == "HS256":
            key, algorithms = self._secret, ["HS256"]
        else:
            raise AuthError("algorithm", "token algorithm or key id not accepted")
        options: dict[str, Any] = {"require": ["exp", "sub"]}
        kwargs: dict[str, Any] = {}
        if self._config.audience:
            kwargs["audience"] = self._config.audience
            options["require"].append("aud")
        else:
            options["verify_aud"] = False
        if self._config.issuer:
            kwargs["issuer"] = self._config.issuer
            options["require"].append("iss")
        try:
            claims = jwt.decode(
                token, key, algorithms=algorithms, options=options,  # type: ignore[arg-type]
                leeway=self._config.leeway, **kwargs,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "token has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("audience", "token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise AuthError("issuer", "token issuer not accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("signature", "token signature is invalid") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError("claims", f"token lacks the {e.claim!r} claim") from None
        except jwt.PyJWTError:
            raise AuthError("invalid", "token is invalid") from None
        sub = claims.get("sub")
        role = claims.get("role")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise AuthError("claims", "token 'sub' must be a non-empty string of at most 128 characters")
        if role not in ROLES:
            raise AuthError("claims", "token 'role' must be customer, agent or admin")
        for claim, value in (("sub", sub), ("name", claims.get("name"))):
            problem = text_problem(value) if isinstance(value, str) else None
            if problem is not None:
                # It would be stored (participants, senders) and echoed to others.
                raise AuthError("claims", f"token '{claim}' {problem}")
        if role != "customer" and not is_staff_id_allowed(sub):
            raise AuthError("claims", "a staff token's 'sub' may not begin with 'c:'")
        name = claims.get("name")
        iat = claims.get("iat")
        issued = float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None
        profile = claims.get("profile")
        return Principal(sub, role, name if isinstance(name, str) else None, issued,
                         profile if role == "customer" and isinstance(profile, dict) else None)


class TokenIssuer:
    """Signs HS256 tokens with the server secret (visitors, admin command)."""

    def __init__(self, config: AuthConfig, secret: str) -> None:
        self._config = config
        self._secret = secret

    def mint(self, user_id: str, role: str, ttl: float, now: float, name: str | None = None) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        claims: dict[str, Any] = {"sub": user_id, "role": role, "iat": int(now), "exp": int(now + ttl)}
        if name:
            claims["name"] = name
        if self._config.audience:
            claims["aud"] = self._config.audience
        if self._config.issuer:
            claims["iss"] = self._config.issuer
        return jwt.encode(claims, self._secret, algorithm="HS256")
