"""Tests for supportchat.auth: token verification, the secret bootstrap and
token minting."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import stat
import tempfile
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.trial.unittest import SynchronousTestCase

from supportchat.auth import AuthError, Principal, TokenIssuer, TokenVerifier, ensure_secret
from supportchat.config import AuthConfig

SECRET = "k" * 48
OTHER_SECRET = "o" * 48
HOUR = 3600


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def handmade_token(header: dict, claims: dict, signature: bytes = b"") -> str:
    """A compact JWT built without PyJWT (for algorithms PyJWT refuses to produce)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return signing_input + "." + b64url(signature)


def hs256_with_key(header: dict, claims: dict, key: bytes) -> str:
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def claims_for(sub="alice", role="agent", ttl=HOUR, **extra) -> dict:
    # PyJWT checks exp against the wall clock; tokens are minted relative to it
    # with margins far larger than a test run.
    now = int(time.time())
    out = {"sub": sub, "role": role, "iat": now, "exp": now + ttl}
    out.update(extra)
    return out


def pem_public(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class _Temp:
    def tempdir(self) -> str:
        path = tempfile.mkdtemp(prefix="supportchat-auth-")
        self.addCleanup(shutil.rmtree, path, True)
        return path


class HS256VerifyTests(SynchronousTestCase):
    def verifier(self, **config) -> TokenVerifier:
        return TokenVerifier(AuthConfig(**config), SECRET)

    def assertRefused(self, verifier: TokenVerifier, token: str, reason: str | None = None) -> AuthError:
        e = self.assertRaises(AuthError, verifier.verify, token)
        if reason is not None:
            self.assertEqual(e.reason, reason)
        return e

    def test_valid_token(self):
        """A valid HS256 token yields the principal with its id, role and name."""
        token = jwt.encode(claims_for(name="Alice"), SECRET, algorithm="HS256")
        self.assertEqual(self.verifier().verify(token), Principal("alice", "agent", "Alice"))

    def test_every_role_accepted(self):
        """customer, agent and admin tokens are all accepted."""
        for role in ("customer", "agent", "admin"):
            token = jwt.encode(claims_for(role=role), SECRET, algorithm="HS256")
            self.assertEqual(self.verifier().verify(token).role, role)

    def test_not_a_jwt(self):
        """Garbage is refused as malformed."""
        self.assertRefused(self.verifier(), "not-a-token", "malformed")

    def test_missing_sub(self):
        """A token without 'sub' is refused."""
        claims = claims_for()
        del claims["sub"]
        self.assertRefused(self.verifier(), jwt.encode(claims, SECRET, algorithm="HS256"), "claims")

    def test_empty_or_long_sub(self):
        """'sub' must be a non-empty string of at most 128 characters."""
        for sub in ("", "u" * 129):
            token = jwt.encode(claims_for(sub=sub), SECRET, algorithm="HS256")
            self.assertRefused(self.verifier(), token, "claims")
        token = jwt.encode(claims_for(sub="u" * 128), SECRET, algorithm="HS256")
        self.assertEqual(self.verifier().verify(token).user_id, "u" * 128)

    def test_unstorable_sub_or_name(self):
        """A 'sub' or 'name' that could not be stored or echoed (a lone
        surrogate, a NUL) is refused at authentication, not at the first
        message."""
        for claims in (claims_for(sub="a\ud800"), claims_for(sub="a\x00b"), claims_for(name="Eve\ud800")):
            self.assertRefused(self.verifier(), jwt.encode(claims, SECRET, algorithm="HS256"), "claims")

    def test_missing_role(self):
        """A token without 'role' is refused."""
        claims = claims_for()
        del claims["role"]
        self.assertRefused(self.verifier(), jwt.encode(claims, SECRET, algorithm="HS256"), "claims")

    def test_role_not_allowed(self):
        """A role other than customer, agent or admin is refused."""
        for role in ("root", "Agent", 1):
            token = jwt.encode(claims_for(role=role), SECRET, algorithm="HS256")
            self.assertRefused(self.verifier(), token, "claims")

    def test_missing_exp(self):
        """A token without 'exp' (one that never expires) is refused."""
        claims = claims_for()
        del claims["exp"]
        self.assertRefused(self.verifier(), jwt.encode(claims, SECRET, algorithm="HS256"), "claims")

    def test_expired(self):
        """An expired token is refused as expired."""
        token = jwt.encode(claims_for(ttl=-HOUR), SECRET, algorithm="HS256")
        self.assertRefused(self.verifier(), token, "expired")

    def test_leeway(self):
        """A token that expired within the configured leeway is still accepted."""
        token = jwt.encode(claims_for(ttl=-5), SECRET, algorithm="HS256")
        self.assertEqual(self.verifier(leeway=HOUR).verify(token).user_id, "alice")
        self.assertRefused(self.verifier(leeway=0), token, "expired")

    def test_wrong_signature(self):
        """A token signed with another secret is refused."""
        token = jwt.encode(claims_for(), OTHER_SECRET, algorithm="HS256")
        self.assertRefused(self.verifier(), token, "signature")

    def test_tampered_payload(self):
        """Changing the claims after signing breaks the signature."""
        token = jwt.encode(claims_for(role="customer"), SECRET, algorithm="HS256")
        header, _, sig = token.split(".")
        forged = header + "." + b64url(json.dumps(claims_for(role="admin")).encode()) + "." + sig
        self.assertRefused(self.verifier(), forged, "signature")

    def test_alg_none(self):
        """An unsigned token (alg "none") is refused."""
        for alg in ("none", "None", "NONE"):
            token = handmade_token({"alg": alg, "typ": "JWT"}, claims_for(role="admin"))
            self.assertRefused(self.verifier(), token)

    def test_other_hmac_algorithms(self):
        """Only HS256 is accepted for the shared secret."""
        token = jwt.encode(claims_for(), SECRET * 2, algorithm="HS512")
        self.assertRefused(self.verifier(), token, "algorithm")

    def test_audience_checked(self):
        """With an audience configured, a token for another audience is refused."""
        verifier = self.verifier(audience="supportchat")
        token = jwt.encode(claims_for(aud="billing"), SECRET, algorithm="HS256")
        self.assertRefused(verifier, token, "audience")
        token = jwt.encode(claims_for(aud="supportchat"), SECRET, algorithm="HS256")
        self.assertEqual(verifier.verify(token).user_id, "alice")

    def test_audience_required(self):
        """With an audience configured, a token without 'aud' is refused."""
        token = jwt.encode(claims_for(), SECRET, algorithm="HS256")
        self.assertRefused(self.verifier(audience="supportchat"), token, "claims")

    def test_audience_ignored_when_unset(self):
        """Without a configured audience, a token's 'aud' does not matter."""
        token = jwt.encode(claims_for(aud="anything"), SECRET, algorithm="HS256")
        self.assertEqual(self.verifier().verify(token).user_id, "alice")

    def test_issuer_checked(self):
        """With an issuer configured, a token from another issuer is refused."""
        verifier = self.verifier(issuer="https://idp.example")
        token = jwt.encode(claims_for(iss="https://evil.example"), SECRET, algorithm="HS256")
        self.assertRefused(verifier, token, "issuer")
        token = jwt.encode(claims_for(iss="https://idp.example"), SECRET, algorithm="HS256")
        self.assertEqual(verifier.verify(token).user_id, "alice")

    def test_issuer_required(self):
        """With an issuer configured, a token without 'iss' is refused."""
        token = jwt.encode(claims_for(), SECRET, algorithm="HS256")
        self.assertRefused(self.verifier(issuer="https://idp.example"), token, "claims")


class PublicKeyTests(_Temp, SynchronousTestCase):
    def setUp(self):
        self.dir = self.tempdir()
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.rsa_pem = pem_public(self.rsa)
        keys = {}
        for kid, pem in (("rsa-1", self.rsa_pem), ("ed-1", pem_public(self.ed))):
            path = os.path.join(self.dir, kid + ".pem")
            with open(path, "wb") as f:
                f.write(pem)
            keys[kid] = path
        self.config = AuthConfig(jwt_public_keys=keys)
        self.verifier = TokenVerifier(self.config, SECRET)

    def test_rs256_by_kid(self):
        """An RS256 token whose kid names a configured public key is accepted."""
        token = jwt.encode(claims_for(sub="bob"), self.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
        self.assertEqual(self.verifier.verify(token), Principal("bob", "agent"))

    def test_eddsa_by_kid(self):
        """An EdDSA token whose kid names a configured public key is accepted."""
        token = jwt.encode(claims_for(sub="carol", role="admin"), self.ed, algorithm="EdDSA",
                           headers={"kid": "ed-1"})
        self.assertEqual(self.verifier.verify(token), Principal("carol", "admin"))

    def test_wrong_private_key(self):
        """A token signed by a key other than the one its kid names is refused."""
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(claims_for(), other, algorithm="RS256", headers={"kid": "rsa-1"})
        self.assertRefusedToken(token)
        token = jwt.encode(claims_for(), self.rsa, algorithm="RS256", headers={"kid": "ed-1"})
        self.assertRefusedToken(token)

    def test_unknown_kid(self):
        """An asymmetric token whose kid is not configured is refused."""
        token = jwt.encode(claims_for(), self.rsa, algorithm="RS256", headers={"kid": "rsa-2"})
        self.assertRefusedToken(token)
        token = jwt.encode(claims_for(), self.rsa, algorithm="RS256")
        self.assertRefusedToken(token)

    def test_algorithm_confusion_with_kid(self):
        """An HS256 token signed with a public key PEM as secret is refused when it names that key."""
        token = hs256_with_key({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims_for(role="admin"), self.rsa_pem)
        self.assertRefusedToken(token)

    def test_algorithm_confusion_without_kid(self):
        """An HS256 token signed with a public key PEM as secret is refused without a kid too."""
        token = hs256_with_key({"alg": "HS256", "typ": "JWT"}, claims_for(role="admin"), self.rsa_pem)
        self.assertRefusedToken(token)

    def test_alg_none_with_kid(self):
        """An unsigned token naming a configured key is refused."""
        token = handmade_token({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims_for(role="admin"))
        self.assertRefusedToken(token)

    def test_hs256_still_accepted(self):
        """Configuring public keys does not stop HS256 tokens signed with the server secret."""
        token = jwt.encode(claims_for(), SECRET, algorithm="HS256")
        self.assertEqual(self.verifier.verify(token).user_id, "alice")

    def test_claims_checked_for_public_key_tokens(self):
        """Asymmetric tokens need the same claims (role, exp) as HS256 ones."""
        token = jwt.encode(claims_for(role="root"), self.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
        self.assertRefusedToken(token)
        token = jwt.encode(claims_for(ttl=-HOUR), self.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
        self.assertEqual(self.assertRefusedToken(token).reason, "expired")

    def assertRefusedToken(self, token: str) -> AuthError:
        return self.assertRaises(AuthError, self.verifier.verify, token)


class EnsureSecretTests(_Temp, SynchronousTestCase):
    def test_generated_with_mode_0600(self):
        """Without a configured secret one is generated into the data dir, readable by the owner only."""
        data_dir = os.path.join(self.tempdir(), "nested", "data")
        secret, path = ensure_secret(AuthConfig(), data_dir)
        self.assertEqual(os.path.dirname(path), data_dir)
        self.assertGreaterEqual(len(secret), 32)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(f.read().strip(), secret)

    def test_mode_0600_despite_permissive_umask(self):
        """The generated secret file is 0600 even with umask 000."""
        old = os.umask(0)
        try:
            secret, path = ensure_secret(AuthConfig(), self.tempdir())
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_second_call_returns_same_secret(self):
        """A restart reuses the stored secret, so issued tokens stay valid."""
        data_dir = self.tempdir()
        first = ensure_secret(AuthConfig(), data_dir)
        second = ensure_secret(AuthConfig(), data_dir)
        self.assertEqual(first, second)

    def test_distinct_data_dirs_get_distinct_secrets(self):
        """Each installation gets its own random secret."""
        a, _ = ensure_secret(AuthConfig(), self.tempdir())
        b, _ = ensure_secret(AuthConfig(), self.tempdir())
        self.assertNotEqual(a, b)

    def test_configured_secret_wins(self):
        """A configured secret is used and no file is written."""
        data_dir = self.tempdir()
        ensure_secret(AuthConfig(), data_dir)  # a stored secret exists
        secret, path = ensure_secret(AuthConfig(jwt_secret=OTHER_SECRET), data_dir)
        self.assertEqual(secret, OTHER_SECRET)
        self.assertIsNone(path)
        empty = os.path.join(self.tempdir(), "unused")
        ensure_secret(AuthConfig(jwt_secret=OTHER_SECRET), empty)
        self.assertFalse(os.path.exists(empty))


class TokenIssuerTests(SynchronousTestCase):
    def test_round_trip(self):
        """A minted token is accepted by the verifier with the same secret."""
        config = AuthConfig()
        token = TokenIssuer(config, SECRET).mint("alice", "customer", ttl=HOUR, now=time.time(), name="Alice")
        self.assertEqual(TokenVerifier(config, SECRET).verify(token), Principal("alice", "customer", "Alice"))

    def test_other_secret_refused(self):
        """A token minted with one secret is refused by a verifier with another."""
        token = TokenIssuer(AuthConfig(), OTHER_SECRET).mint("alice", "agent", ttl=HOUR, now=time.time())
        self.assertRaises(AuthError, TokenVerifier(AuthConfig(), SECRET).verify, token)

    def test_claims(self):
        """Minted tokens carry sub, role, iat and exp = now + ttl, HS256-signed."""
        now = 1_700_000_000.7
        token = TokenIssuer(AuthConfig(), SECRET).mint("bob", "agent", ttl=600, now=now)
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS256")
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
        self.assertEqual(claims["sub"], "bob")
        self.assertEqual(claims["role"], "agent")
        self.assertEqual(claims["iat"], int(now))
        self.assertEqual(claims["exp"], int(now + 600))
        self.assertNotIn("aud", claims)
        self.assertNotIn("iss", claims)
        self.assertNotIn("name", claims)

    def test_audience_and_issuer_included(self):
        """With audience and issuer configured, minted tokens carry them and verify."""
        config = AuthConfig(audience="supportchat", issuer="https://chat.example")
        token = TokenIssuer(config, SECRET).mint("alice", "agent", ttl=HOUR, now=time.time())
        claims = jwt.decode(token, options={"verify_signature": False})
        self.assertEqual(claims["aud"], "supportchat")
        self.assertEqual(claims["iss"], "https://chat.example")
        self.assertEqual(TokenVerifier(config, SECRET).verify(token).user_id, "alice")

    def test_expired_mint(self):
        """A token minted in the past with a short ttl is refused as expired."""
        token = TokenIssuer(AuthConfig(), SECRET).mint("alice", "agent", ttl=60, now=time.time() - 2 * HOUR)
        e = self.assertRaises(AuthError, TokenVerifier(AuthConfig(), SECRET).verify, token)
        self.assertEqual(e.reason, "expired")

    def test_bad_role(self):
        """Minting refuses a role the verifier would not accept."""
        self.assertRaises(ValueError, TokenIssuer(AuthConfig(), SECRET).mint, "alice", "root", 60, time.time())
