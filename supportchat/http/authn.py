"""The one authentication path: the WebSocket handshake and every REST
route ask :class:`Authenticator` who a bearer token belongs to.

It verifies the token (signature, expiry, audience, issuer, claims: see
``supportchat.auth.TokenVerifier``) and, for staff tokens (role agent or
admin), loads the account from the ``agents`` table on every request and
refuses it when the account is disabled, the token was issued before the
account's tokens were revoked, or the token's role is no longer the
account's role. A staff token with no account row stays valid (tokens
minted by ``supportchat-admin token`` or signed by an integrator; the
workflow creates the row on first connection). Customer tokens have no
account: they are checked by signature and claims only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.http import Request

from supportchat.auth import AuthError, Principal, TokenVerifier, account_refusal

if TYPE_CHECKING:
    from supportchat.workflow.models import Agent


class AccountLookup(Protocol):
    """Where staff accounts live (the ``WorkflowStore`` and its twin)."""

    def get_agent(self, agent_id: str) -> "Deferred[Agent | None]": ...


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header (REST only takes it
    from there; the WebSocket handshake has two more places, see
    ``supportchat.http.guard.token_from_request``)."""
    auth = request.getHeader(b"authorization") or b""
    scheme, _, value = auth.partition(b" ")
    if scheme.lower() != b"bearer" or not value.strip():
        return None
    return value.strip().decode("ascii", "replace")


class Authenticator:
    """Token to :class:`Principal`, with the account check for staff."""

    def __init__(self, verifier: TokenVerifier, accounts: AccountLookup | None) -> None:
        self.verifier = verifier
        self._accounts = accounts

    def authenticate(self, token: str) -> "Deferred[Principal]":
        """The principal, or a failure with :class:`AuthError` (the token
        or the account refuses it); a store failure fails with its own
        error. Fires at once for customer tokens and refused tokens (no
        lookup)."""
        try:
            principal = self.verifier.verify(token)
        except AuthError as e:
            return fail(e)
        if principal.role == "customer" or self._accounts is None:
            return succeed(principal)

        def check(agent: Agent | None) -> Principal:
            refusal = account_refusal(agent, principal)
            if refusal is not None:
                raise refusal
            return principal

        return self._accounts.get_agent(principal.user_id).addCallback(check)
