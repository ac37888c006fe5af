"""``GET /api/v1/openapi.json``: an OpenAPI 3.0 description of every REST
endpoint under /api/v1 (tests/test_openapi.py checks that each mounted
route and method is described). Public, like the code it describes."""

from __future__ import annotations

from typing import Any

from twisted.web.http import Request

from supportchat.http.common import json_body
from supportchat.http.resources import JsonResource

_ERR = {"$ref": "#/components/responses/Error"}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


_S, _I, _N, _B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_ANY_OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_EVENTS: dict[str, Any] = {"type": "array", "items": {"type": "string", "enum": [
    "conversation.created", "message.created", "note.created", "conversation.assigned", "conversation.transferred",
    "conversation.closed", "conversation.reopened", "conversation.rated", "customer.updated", "customer.erased"]}}
WEBHOOK = _obj({"id": _S, "url": _S, "events": _EVENTS, "description": _S, "paused": _B,
                "paused_reason": {"type": "string", "nullable": True, "enum": ["admin", "gone", None]},
                "created_at": _N, "previous_secret_valid_until": {"type": "number", "nullable": True}})
WEBHOOK_ATTEMPT = _obj({
    "id": _S, "event_id": _S, "type": _S, "conversation": _S, "seq": _I, "attempt": _I, "ts": _N,
    "outcome": {"type": "string", "enum": ["delivered", "failed", "refused", "gone", "dead"]},
    "status_code": {"type": "integer", "nullable": True}, "latency": {"type": "number", "nullable": True},
    "error": {"type": "string", "nullable": True}, "response_excerpt": {"type": "string", "nullable": True}})


_HTML = {"description": "An HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}


def _op(summary: str, ok: int = 200, ok_schema: dict[str, Any] | None = None, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, errors: tuple[int, ...] = (401, 403), public: bool = False,
        tag: str = "workflow") -> dict[str, Any]:
    responses: dict[str, Any] = {str(ok): dict(description="OK", **_json(ok_schema or _ANY_OBJ))}
    for code in sorted(set(errors) | {400}):
        responses[str(code)] = _ERR
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if not public:
        op["security"] = _BEARER
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = dict(required=True, **_json(body))
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _p(name: str, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _S, "description": description}


AGENT = _obj({"id": _S, "login": _S, "name": _S, "role": {"type": "string", "enum": ["agent", "admin"]},
              "team": _S, "capacity": _I, "status": {"type": "string", "enum": ["online", "away", "offline"]},
              "load": _I, "disabled": _B, "created_at": _N})
TEAM = _obj({"id": _S, "name": _S, "created_at": _N})
ITEM = _obj({"conversation": _S, "customer_id": _S, "team": _S,
             "state": {"type": "string", "enum": ["bot", "queued", "assigned", "closed"]},
             "agent_id": {"type": "string", "nullable": True}, "queued_at": _N,
             "assigned_at": {"type": "number", "nullable": True}, "closed_at": {"type": "number", "nullable": True},
             "waiting": _N, "unread": _I, "rating": _I, "rating_comment": _S})
CANNED = _obj({"id": _S, "scope": {"type": "string", "enum": ["team", "personal"]}, "owner": _S, "shortcut": _S,
               "title": _S, "body": _S, "created_by": _S, "created_at": _N, "updated_at": _N})
PROFILE_ATTRS: dict[str, Any] = {"type": "object", "additionalProperties": {"nullable": True}}
PROFILE = _obj({"customer_id": _S, "name": _S, "email": _S, "phone": _S, "attributes": PROFILE_ATTRS,
                "masked": {"type": "array", "items": _S, "description": "sensitive fields shown masked"},
                "updated_at": _N})
PROFILE_EDIT = _obj({"name": {"type": "string", "maxLength": 200}, "email": {"type": "string", "maxLength": 320},
                     "phone": {"type": "string", "maxLength": 40}, "attributes": PROFILE_ATTRS})
_NULL_I, _NULL_S = {"type": "integer", "nullable": True}, {"type": "string", "nullable": True}
ATTACHMENT = _obj({"id": _S, "name": _S, "content_type": _S, "size": _I, "width": _NULL_I, "height": _NULL_I,
                   "url": _S, "thumbnail_url": _NULL_S})
MESSAGE = _obj({"conversation": _S, "msg_id": _S, "seq": _I, "client_msg_id": {"type": "string", "nullable": True},
                "sender": _obj({"id": _S, "role": _S}), "kind": {"type": "string", "enum": ["text", "event"]},
                "body": _S, "ts": _N, "event": _ANY_OBJ, "attachments": {"type": "array", "items": ATTACHMENT}})
TOKENS = _obj({"access_token": _S, "refresh_token": _S, "token_type": _S, "expires_in": _N, "agent": AGENT})
AGENT_EDIT = {"name": _S, "role": {"type": "string", "enum": ["agent", "admin"]}, "team": _S, "capacity": _I,
              "password": {"type": "string", "minLength": 8, "maxLength": 1024, "format": "password"}}
CANNED_EDIT = {"shortcut": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"},
               "title": {"type": "string", "maxLength": 200}, "body": {"type": "string", "minLength": 1,
                                                                       "maxLength": 4000}}


def openapi_document() -> dict[str, Any]:
    """The document (plain data, JSON-serialisable)."""
    paths: dict[str, Any] = {
        "/api/v1/openapi.json": {"get": _op("This document", public=True, errors=(), tag="meta")},
        "/api/v1/visitors": {"post": _op(
            "A fresh anonymous customer identity and token (CORS for allowed origins)", 201,
            _obj({"user_id": _S, "role": _S, "token": _S, "expires_at": _I}), public=True, errors=(404, 429),
            tag="customers")},
        "/api/v1/widget-config": {"get": _op(
            "What the widget shows on opening, without creating a conversation: the bot's greeting (per language) and "
            "quick replies, business hours (open_now, next_open), whether an agent is online, and whether the offline "
            "email form may be offered (email; cached 5 s; CORS for allowed origins)",
            ok_schema=_obj({"greeting": {"type": "object", "nullable": True}, "quick_replies": {"type": "array"},
                            "open_now": {"type": "boolean"}, "next_open": {"type": "number", "nullable": True},
                            "agents_online": {"type": "boolean", "nullable": True}, "email": {"type": "boolean"}}),
            public=True, errors=(), tag="customers")},
        "/api/v1/me": {"get": _op(
            "Whose is this token, and is it still good? 401 carries error.reason (expired, signature, audience, "
            "account_disabled...): the web clients ask after a refused WebSocket connect (CORS for allowed origins)",
            ok_schema=_obj({"user": _obj({"id": _S, "role": _S, "name": _S}),
                            "expires_at": {"type": "integer", "nullable": True}}), errors=(401,), tag="auth")},
        "/api/v1/login": {"post": _op(
            "Agent/admin login: short-lived access token and a one-use refresh token", 200, TOKENS,
            _obj({"login": _S, "password": {"type": "string", "format": "password"}}, ("login", "password")),
            public=True, errors=(401, 429, 503), tag="auth")},
        "/api/v1/refresh": {"post": _op(
            "Exchange a refresh token (one use) for a new pair", 200, TOKENS,
            _obj({"refresh_token": _S}, ("refresh_token",)), public=True, errors=(401,), tag="auth")},
        "/api/v1/agents": {
            "get": _op("List agents and admins", ok_schema=_obj({"agents": {"type": "array", "items": AGENT}})),
            "post": _op("Create an agent (admins)", 201, AGENT,
                        _obj(dict(AGENT_EDIT, login=_S, id=_S), ("login", "password")), errors=(401, 403, 409)),
        },
        "/api/v1/agents/{id}": {
            "parameters": [_p("id", "agent id")],
            "get": _op("One agent (admins, or the agent themself)", ok_schema=AGENT, errors=(401, 403, 404)),
            "patch": _op("Edit an agent (admins); disabled=true revokes tokens and requeues", ok_schema=AGENT,
                         body=_obj(dict(AGENT_EDIT, disabled=_B)), errors=(401, 403, 404)),
        },
        "/api/v1/teams": {
            "get": _op("List teams", ok_schema=_obj({"teams": {"type": "array", "items": TEAM}})),
            "post": _op("Create a team (admins)", 201, TEAM, _obj({"id": _S, "name": _S}, ("id", "name")),
                        errors=(401, 403, 409)),
        },
        "/api/v1/teams/{id}": {
            "parameters": [_p("id", "team id")],
            "patch": _op("Rename a team (admins)", ok_schema=TEAM, body=_obj({"name": _S}, ("name",)),
                         errors=(401, 403, 404)),
        },
        "/api/v1/inbox": {"get": _op(
            "Conversations in the workflow (agents: own team)",
            ok_schema=_obj({"conversations": {"type": "array", "items": ITEM}}),
            params=[_q("state", {"type": "string", "enum": ["bot", "queued", "assigned", "closed"]}),
                    _q("agent", _S), _q("team", _S), _q("waiting_min", _I, "queued at least this many seconds"),
                    _q("unread", {"type": "string", "enum": ["true", "false"]},
                       "only conversations whose assigned agent has unread messages"),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000})])},
        "/api/v1/inbox/{conversation}": {
            "parameters": [_p("conversation")],
            "get": _op("One conversation's work item with its internal notes", ok_schema=ITEM,
                       errors=(401, 403, 404)),
        },
        "/api/v1/csat": {"get": _op(
            "Ratings report: count, average, distribution, per agent (admins)",
            params=[_q("since", _I, "unix time")])},
        "/api/v1/canned": {
            "get": _op("Canned responses: the team's and one's own (admins: every team's and own)",
                       ok_schema=_obj({"canned": {"type": "array", "items": CANNED}}),
                       params=[_q("shortcut", _S, "prefix"), _q("team", _S)]),
            "post": _op("Create a personal response (agents) or a team one (admins)", 201, CANNED,
                        _obj(dict(CANNED_EDIT, scope={"type": "string", "enum": ["team", "personal"]}, team=_S),
                             ("shortcut", "body")), errors=(401, 403, 409)),
        },
        "/api/v1/canned/{id}": {
            "parameters": [_p("id")],
            "get": _op("One canned response", ok_schema=CANNED, errors=(401, 403, 404)),
            "patch": _op("Edit (the owner; admins for team responses)", ok_schema=CANNED, body=_obj(CANNED_EDIT),
                         errors=(401, 403, 404, 409)),
            "delete": _op("Delete (as PATCH)", ok_schema=_obj({"deleted": _S}), errors=(401, 403, 404)),
        },
        "/api/v1/customers": {"get": _op(
            "Customers with this phone number, any formatting (blind index; agents see sensitive fields masked)",
            ok_schema=_obj({"customers": {"type": "array", "items": PROFILE}}),
            params=[dict(_q("phone", _S, "phone number"), required=True)], errors=(401, 403, 500),
            tag="customers")},
        "/api/v1/customers/{id}/profile": {
            "parameters": [_p("id", "customer user id")],
            "get": _op("A customer's profile (the customer; agents masked; admins)", ok_schema=PROFILE,
                       errors=(401, 403, 404, 500), tag="customers"),
            "put": _op("Replace a customer's profile (admins, integrator tokens with role admin)",
                       ok_schema=PROFILE, body=PROFILE_EDIT, errors=(401, 403, 500), tag="customers"),
        },
        "/api/v1/attachments": {"post": dict(_op(
            "Upload an image or file (multipart/form-data: file, optional conversation); send it with a message "
            "frame's attachments. Size limit enforced while reading (413), type sniffed from the bytes (415), "
            "images decoded under a pixel limit and re-encoded (422)", 201,
            _obj({"id": _S, "name": _S, "content_type": _S, "size": _I, "sha256": _S, "width": _NULL_I,
                  "height": _NULL_I, "url": _S, "thumbnail_url": _NULL_S}),
            errors=(401, 404, 413, 415, 422, 429, 503), tag="attachments"),
            requestBody={"required": True, "content": {"multipart/form-data": {"schema": _obj(
                {"file": {"type": "string", "format": "binary"}, "conversation": _S}, ("file",))}}})},
        "/api/v1/attachments/{id}": {
            "parameters": [_p("id", "attachment id")],
            "get": dict(_op(
                "Download: a signed link's exp and sig, or a bearer token (uploader; once sent, participants and "
                "staff). nosniff, sandbox CSP, attachment disposition but for images, Range, ETag",
                errors=(401, 403, 404, 416), tag="attachments",
                params=[_q("exp", _I, "link expiry (Unix seconds)"), _q("sig", _S, "link signature")]),
                responses={"200": {"description": "the bytes"}, "206": {"description": "a byte range"},
                           "304": {"description": "not modified (If-None-Match)"}, "401": _ERR, "403": _ERR,
                           "404": _ERR, "416": _ERR}),
        },
        "/api/v1/attachments/{id}/thumbnail": {
            "parameters": [_p("id", "attachment id")],
            "get": dict(_op("An image's thumbnail (JPEG, or PNG with transparency); the same access rules",
                            errors=(401, 403, 404), tag="attachments",
                            params=[_q("exp", _I), _q("sig", _S)]),
                        responses={"200": {"description": "the thumbnail"}, "401": _ERR, "403": _ERR, "404": _ERR}),
        },
        "/api/v1/conversations/{id}/messages": {
            "parameters": [_p("id", "conversation id")],
            "get": _op(
                "History in keyset pages (participants, admins)", tag="history",
                ok_schema=_obj({"messages": {"type": "array", "items": MESSAGE}, "has_more": _B}),
                params=[_q("after_seq", {"type": "integer", "minimum": 0}),
                        _q("before_seq", {"type": "integer", "minimum": 1}), _q("limit", _I)],
                errors=(401, 404, 503)),
        },
        "/api/v1/search": {"get": _op(
            "Full-text search in one's conversations (admins: all)", tag="history",
            ok_schema=_obj({"query": _S, "messages": {"type": "array", "items": MESSAGE}}),
            params=[dict(_q("q", _S, "words to search for"), required=True), _q("limit", _I)],
            errors=(401, 503))},
        "/api/v1/admin/customers/{id}/export": {
            "parameters": [_p("id", "customer user id")],
            "get": _op("Everything stored about a customer (admins)", tag="privacy", errors=(401, 403, 404)),
        },
        "/api/v1/admin/customers/{id}": {
            "parameters": [_p("id", "customer user id")],
            "delete": _op("Erase a customer's conversations and messages (admins)", tag="privacy",
                          errors=(401, 403, 404)),
        },
        "/api/v1/email": {
            "post": _op("Leave an email address for the customer's own conversation (the offline form): agent "
                        "replies are then emailed too, and with transcript the conversation at close (customers; "
                        "404 when email is off)", ok_schema=_obj({"conversation": _S, "email": _S, "transcript": _B, "replies": _B}),
                        body=_obj({"conversation": _S, "email": _S, "transcript": _B, "replies": _B, "lang": _S},
                                  ("conversation", "email")), tag="email", errors=(401, 403, 404, 413)),
        },
        "/api/v1/unsubscribe": {
            "get": {"summary": "The signed link in every email: a page with a button that stops the emails "
                               "(query: conversation, token)", "tags": ["email"], "security": [],
                    "responses": {"200": _HTML, "404": _ERR}},
            "post": {"summary": "Stop the emails of a conversation (the signed link's query)", "tags": ["email"],
                     "security": [], "responses": {"200": _HTML, "404": _ERR, "503": _ERR}},
        },
        "/api/v1/webhooks": {
            "get": _op("Webhook endpoints (admins; secrets are never listed)", tag="webhooks",
                       ok_schema=_obj({"webhooks": {"type": "array", "items": WEBHOOK}}), errors=(401, 403)),
            "post": _op("Register a webhook endpoint (admins); the answer holds its secret, shown only this once",
                        201, dict(WEBHOOK, properties=dict(WEBHOOK["properties"], secret=_S)), tag="webhooks",
                        body=_obj({"url": _S, "events": _EVENTS, "description": _S}, ("url", "events")),
                        errors=(401, 403, 413)),
        },
        "/api/v1/webhooks/{id}": {
            "parameters": [_p("id", "webhook id")],
            "get": _op("One webhook endpoint (admins)", ok_schema=WEBHOOK, tag="webhooks", errors=(401, 403, 404)),
            "patch": _op(
                "Change the URL, events or description, pause or resume, or rotate the secret (the new one is in "
                "the answer; the old one still signs, as a second v1, for grace_period seconds)", tag="webhooks",
                ok_schema=dict(WEBHOOK, properties=dict(WEBHOOK["properties"], secret=_S)),
                body=_obj({"url": _S, "events": _EVENTS, "description": _S, "paused": _B, "rotate_secret": _B,
                           "grace_period": _N}), errors=(401, 403, 404)),
            "delete": _op("Remove a webhook endpoint with its delivery history (admins)", tag="webhooks",
                          ok_schema=_obj({"id": _S, "deleted": _B}), errors=(401, 403, 404)),
        },
        "/api/v1/webhooks/{id}/deliveries": {
            "parameters": [_p("id", "webhook id")],
            "get": _op("Delivery attempts, newest first (admins)", tag="webhooks",
                       ok_schema=_obj({"deliveries": {"type": "array", "items": WEBHOOK_ATTEMPT}, "next_before": _S}),
                       params=[_q("limit", _I, "at most 500"), _q("before", _S, "next_before of the previous page")],
                       errors=(401, 403, 404)),
        },
        "/api/v1/webhooks/{id}/replay": {
            "parameters": [_p("id", "webhook id")],
            "post": _op("Send events again: those after an event id, or at or after a UNIX time (admins)", 202,
                        _obj({"id": _S, "replaying_from": _N}), tag="webhooks",
                        body=_obj({"since": {"oneOf": [_S, _N]}}, ("since",)), errors=(401, 403, 404)),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "supportchat REST API", "version": "1",
                 "description": "Errors are {\"error\": {\"code\", \"message\"}}. The chat itself is a WebSocket "
                                "protocol (docs/protocol.md)."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Error": {"description": "A JSON error", **_json(
                _obj({"error": _obj({"code": _S, "message": _S}, ("code", "message"))}, ("error",)))}},
        },
    }


class OpenApiResource(JsonResource):
    """``GET /api/v1/openapi.json``."""

    methods = (b"GET", b"HEAD")

    def __init__(self) -> None:
        super().__init__()
        self._doc = openapi_document()

    def render_GET(self, request: Request) -> bytes:
        return json_body(request, 200, self._doc)

    render_HEAD = render_GET
