"""The HTTP API described for people and client generators: GET /openapi.json (OpenAPI
3.0) and GET /docs (Swagger UI), built from the actions' own signatures and docstrings
(ph.api.ACTIONS), so the description cannot drift from what the server accepts.

The actions are plain Starlette routes (app.py: FastAPI's per-request model solving
would cost throughput), which FastAPI's generator does not see; hence this module.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object",
              list: "array"}
ERROR = {"type": "object", "required": ["error", "message"],
         "properties": {"error": {"type": "string", "description": "the kind: bad_input, config, "
                                  "not_found, conflict, unavailable, ..."},
                        "message": {"type": "string", "description": "what was wrong and how to "
                                    "fix it"},
                        "request_id": {"type": "string"}}}
STATUSES = {"400": "bad input or config", "401": "no or wrong token", "403": "not allowed by "
            "the operator", "404": "unknown head, job or action", "409": "conflict (exists, "
            "training, changed meanwhile)", "413": "body too large", "429": "over a quota",
            "503": "the store is unreachable: nothing was changed"}


def openapi_document(actions: tuple[Callable, ...], version: str) -> dict:
    paths = {f"/{fn.__name__}/": {"post": _operation(fn)} for fn in actions}
    return {"openapi": "3.0.3",
            "info": {"title": "ph remote actions", "version": version,
                     "description": "Personalized heads for Jaseci: every action is POST "
                                    "/<action>/ with its arguments as a JSON object (Jaseci's "
                                    "remote action protocol)."},
            "components": {"schemas": {"Error": ERROR},
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}],
            "paths": paths}


def _operation(fn: Callable) -> dict:
    doc = inspect.getdoc(fn) or ""
    hints = typing.get_type_hints(fn)
    params = inspect.signature(fn).parameters
    properties = {name: {**_schema(hints.get(name)),
                         **({"default": p.default} if p.default is not inspect.Parameter.empty
                            and _plain(p.default) else {})}
                  for name, p in params.items()}
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    body = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        body["required"] = required
    errors = {code: {"description": what, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for code, what in STATUSES.items()}
    return {"operationId": fn.__name__, "summary": doc.split("\n\n")[0].replace("\n", " "),
            "description": doc, "tags": ["actions"],
            "requestBody": {"required": bool(required),
                            "content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "the action's result",
                                  "content": {"application/json": {
                                      "schema": _schema(hints.get("return"))}}}, **errors}}


def _schema(hint: Any) -> dict:
    """A JSON schema for a parameter's annotation (Any and unions of several: any value)."""
    if hint is None or hint is Any:
        return {}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    nullable = type(None) in typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = _schema(args[0]) if len(args) == 1 else {}
        return {**inner, "nullable": True} if nullable and inner else inner
    base = origin or hint
    kind = JSON_TYPES.get(base)
    return {"type": kind} if kind else {}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def swagger_page(title: str) -> str:
    """Swagger UI for /openapi.json. Its script and style come from a CDN: a browser
    without one still has /openapi.json itself."""
    from fastapi.openapi.docs import get_swagger_ui_html
    return get_swagger_ui_html(openapi_url="/openapi.json", title=title).body.decode()
