"""The OpenAPI document with access control on: the bearer scheme, and 401/403 on every
protected operation. A reach into quart-schema's internals, kept here alone.

quart-schema declares security with decorators (`security_scheme`,
`security_scheme_blueprint`) that mark the view function or the blueprint object, both shared
by every app built in the process; whether access control is on is a setting of one app. So
this swaps the app's OpenAPI provider (`app.extensions["QUART_SCHEMA"].openapi_provider`, an
attribute quart-schema sets in `init_app`) for a subclass whose `build_paths` adds the
security to the protected operations. It would go with an upstream way to attach security
requirements per app (a `security` per path prefix on `QuartSchema`, or a hook on the
operations it builds). tests/test_auth.py's `test_quart_schema_has_what_the_bearer_docs_use`
fails when quart-schema changes what this relies on.
"""

from typing import Any

from quart import Quart
from quart_schema import QuartSchema
from quart_schema.openapi import HttpSecurityScheme, OpenAPIProvider
from werkzeug.routing import Rule

from quart_iot.oidc.policy import EVENTS_ENDPOINT, is_protected

SCHEME = "bearerAuth"
EXTENSION_KEY = "QUART_SCHEMA"  # where quart-schema's init_app puts itself
TICKET_PARAMETER = {
    "name": "ticket",
    "in": "query",
    "required": False,
    "description": "A stream ticket (POST /api/configs/events/tickets), for browsers: "
    "EventSource sends no Authorization header",
    "schema": {"type": "string"},
}


def document_bearer(app: Quart) -> None:
    """The OpenAPI document declares the bearer scheme (and 401/403) on every protected
    route (configs and device models)."""
    schema = app.extensions[EXTENSION_KEY]
    assert isinstance(schema, QuartSchema)
    schema.security_schemes = {
        **(schema.security_schemes or {}),
        SCHEME: HttpSecurityScheme(scheme="bearer", bearer_format="JWT"),
    }
    base: type[OpenAPIProvider] = type(schema.openapi_provider)

    class SecuredProvider(base):  # type: ignore[valid-type,misc]  # the app's own provider
        def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
            paths, components = super().build_paths(rule)
            if is_protected(rule.rule):
                for operations in paths.values():
                    for operation in operations.values():
                        secure(operation, rule.endpoint == EVENTS_ENDPOINT)
            return paths, components

    schema.openapi_provider = SecuredProvider(app, schema)


def secure(operation: dict[str, Any], takes_ticket: bool) -> None:
    """Bearer security, and 401/403 answers with the error body of the operation's 500."""
    operation["security"] = [{SCHEME: []}]
    error = operation["responses"].get("500", {})
    for status, description in (("401", "No valid bearer token"), ("403", "Not allowed")):
        operation["responses"][status] = {**error, "description": description}
    if takes_ticket:
        operation["parameters"] = [*operation["parameters"], TICKET_PARAMETER]
