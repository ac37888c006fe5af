"""The OpenAPI document at /api/v1/openapi.json: valid JSON, OpenAPI 3.x,
and every route and method mounted under /api/v1 is described."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from supportchat.http.history import AsyncJsonResource
from supportchat.http.resources import JsonResource
from tests.support import http_client, start_server


def mounted(root: Any) -> dict[str, set[str]]:
    """/api/v1 children of a server's resource tree -> their HTTP methods."""
    v1 = root.children[b"api"].children[b"v1"]
    out: dict[str, set[str]] = {}
    for name, child in v1.children.items():
        if isinstance(child, AsyncJsonResource):
            methods = {m.decode().lower() for m in child.routes}
        elif isinstance(child, JsonResource):
            methods = {m.decode().lower() for m in child.methods} - {"options", "head"}
        else:
            methods = set()
        out[name.decode()] = methods
    return out


class OpenApiTests(unittest.TestCase):
    timeout = 30

    @inlineCallbacks
    def test_document_covers_every_mounted_route(self) -> Any:
        """GET /api/v1/openapi.json is JSON with openapi 3.x; each mounted /api/v1 child and each of its
        methods appears under a path; every operation has responses; refs resolve."""
        running = yield start_server(self)
        r = yield http_client().request("GET", f"http://127.0.0.1:{running.port}/api/v1/openapi.json")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"application/json"])
        doc = json.loads((yield r.text()))
        self.assertTrue(doc["openapi"].startswith("3."))
        self.assertIn("title", doc["info"])
        paths = doc["paths"]
        routes = mounted(running.server.get_root_resource())
        for expected in ("visitors", "login", "refresh", "agents", "teams", "inbox", "csat", "conversations",
                         "search", "admin", "canned", "openapi.json"):
            self.assertIn(expected, routes)
        for name, methods in routes.items():
            described = [p for p in paths if p == f"/api/v1/{name}" or p.startswith(f"/api/v1/{name}/")]
            self.assertTrue(described, f"/api/v1/{name} is not in the document")
            documented = {m for p in described for m in paths[p] if m != "parameters"}
            self.assertLessEqual(methods, documented, f"/api/v1/{name}")
        for path, item in paths.items():
            for method, op in item.items():
                if method == "parameters":
                    continue
                self.assertIn(method, ("get", "post", "patch", "delete", "put"))
                self.assertTrue(op["responses"], f"{method} {path}")
                for placeholder in [s[1:-1] for s in path.split("/") if s.startswith("{")]:
                    params = item.get("parameters", []) + op.get("parameters", [])
                    self.assertIn(placeholder, [p["name"] for p in params if p["in"] == "path"], path)
        text = json.dumps(doc)
        for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
            node: Any = doc
            for key in ref.lstrip("#/").split("/"):
                node = node[key]
