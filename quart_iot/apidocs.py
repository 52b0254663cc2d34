"""API docs extension: the OpenAPI document and a Swagger UI served from a package, not a CDN."""

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from quart import Quart, Response, ResponseReturnValue, abort, send_from_directory
from quart_schema import DataSource, Info, QuartSchema, document_response, hide
from quart_schema.openapi import OpenAPIProvider
from swagger_ui_bundle import swagger_ui_path
from werkzeug.routing import BaseConverter

from quart_iot.models import (
    ConfigPatch,
    ErrorBody,
    EventStream,
    JsonPatchRequest,
    MergePatchRequest,
)
from quart_iot.patch import JSON_PATCH, MERGE_PATCH
from quart_iot.store import MAC_PATTERN, VERSION_PATTERN
from quart_iot.validation import MODEL_CODE_PATTERN

DOCS_PATH = "/api/docs"
ASSETS = {"swagger-ui-bundle.js", "swagger-ui.css"}
# A complete HTML document (quart-schema's page has no doctype, no <html>, no charset).
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="stylesheet" href="{docs}/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{docs}/assets/swagger-ui-bundle.js"></script>
  <script>
    SwaggerUIBundle({{
      url: "{docs}/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      layout: "BaseLayout",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
      showExtensions: true,
      showCommonExtensions: true
    }});
  </script>
</body>
</html>
"""
# What a <mac_address> accepts (any case), so clients and fuzzers know it before they ask.
MAC_SCHEMA = {
    "type": "string",
    "pattern": f"^{MAC_PATTERN}$",
    "minLength": 17,
    "maxLength": 17,
    "examples": ["aa-bb-cc-dd-ee-ff"],
}

VERSION_SCHEMA = {
    "type": "string",
    "pattern": f"^{VERSION_PATTERN}$",
    "minLength": 28,
    "maxLength": 28,
    "examples": ["1767225600000000000-0a1b2c3d"],
}


MODEL_CODE_SCHEMA = {
    "type": "string",
    "pattern": f"^{MODEL_CODE_PATTERN}$",
    "minLength": 1,
    "maxLength": 64,
    "examples": ["esp32_devkitc"],
}
PATH_SCHEMAS = {
    "mac_address": MAC_SCHEMA,
    "version": VERSION_SCHEMA,
    "change_id": VERSION_SCHEMA,  # a bulk change's id is made as a version's (bulk.new_change_id)
    "code": MODEL_CODE_SCHEMA,
}
# A PATCH body is one of two patch documents, each under its own media type.
PATCH_BODIES = {MERGE_PATCH: MergePatchRequest, JSON_PATCH: JsonPatchRequest}


class _OpenAPIProvider(OpenAPIProvider):
    """Documents path parameters, PATCH bodies, empty (204) responses, response headers."""

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if name in PATH_SCHEMAS:
            parameter["schema"] = dict(PATH_SCHEMAS[name])
        return parameter

    def build_request_body(
        self, model: Any, source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if model is ConfigPatch:
            return self._patch_body(source)
        body, components = super().build_request_body(model, source)
        return {**body, "required": True}, components  # a PUT without a body is refused

    def _patch_body(self, source: DataSource) -> tuple[dict[str, Any], dict[str, Any]]:
        content, components = {}, {}
        for media_type, model in PATCH_BODIES.items():
            body, definitions = super().build_request_body(model, source)
            content[media_type] = body["content"]["application/json"]
            components.update(definitions)
        return {"content": content, "required": True}, components

    def build_response_object(
        self, model: Any, headers_model: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if model is None:
            return {"description": "No content"}, {}
        if model is EventStream:  # not JSON: the stream's media type, a text body
            content = {"text/event-stream": {"schema": {"type": "string"}}}
            return {"description": EventStream.__doc__, "content": content}, {}
        response, components = super().build_response_object(model, None)
        if headers_model is not None:
            properties = headers_model.model_json_schema(by_alias=True)["properties"]
            response["headers"] = {
                name: {"schema": {"type": prop["type"]}, "description": prop.get("description", "")}
                for name, prop in properties.items()
            }
        return response, components


class ApiDocs:
    """Extension: quart-schema with the docs under /api/docs and Swagger UI's files local."""

    def __init__(self, title: str, version: str) -> None:
        self.page = PAGE.format(title=html.escape(title), docs=DOCS_PATH)
        self.schema = QuartSchema(
            openapi_path=f"{DOCS_PATH}/openapi.json",
            swagger_ui_path=None,  # our page, below
            redoc_ui_path=None,
            scalar_ui_path=None,
            openapi_provider_class=_OpenAPIProvider,
            info=Info(
                title=title,
                version=version,
                description="One JSON configuration document per ESP32 device.",
            ),
        )

    def init_app(self, app: Quart) -> None:
        self.schema.init_app(app)
        app.json.sort_keys = False  # type: ignore[attr-defined]  # key order is part of a document
        app.json.ensure_ascii = False  # type: ignore[attr-defined]
        app.add_url_rule(DOCS_PATH, "docs", self.docs)
        app.add_url_rule(f"{DOCS_PATH}/assets/<name>", "docs_asset", self.asset)

    @hide
    async def docs(self) -> Response:
        """Swagger UI, reading the OpenAPI document."""
        return Response(self.page, content_type="text/html; charset=utf-8")

    @hide
    async def asset(self, name: str) -> ResponseReturnValue:
        """One of Swagger UI's files, from the installed swagger-ui-bundle package."""
        if name not in ASSETS:
            abort(404)
        return await send_from_directory(Path(str(swagger_ui_path)), name)


F = TypeVar("F", bound=Callable[..., object])


def document_errors(*statuses: int) -> Callable[[F], F]:
    """Document the error body for each status a route can answer with (besides 404/405/500)."""

    def decorator(func: F) -> F:
        for status in (*statuses, 500):
            func = document_response(ErrorBody, status)(func)
        return func

    return decorator
