"""Access control: OpenID Connect bearer tokens (JWT access tokens) for people and devices."""

import ipaddress
import logging
from typing import Any

from aioprometheus.collectors import Counter
from quart import Quart, Response, g, request
from quart_schema.openapi import HttpSecurityScheme
from werkzeug.routing import Rule

from quart_iot.errors import Forbidden, Unauthorized
from quart_iot.settings import Settings

log = logging.getLogger(__name__)
audit_log = logging.getLogger("quart_iot.audit")

PROTECTED = "/api/configs"
READ_METHODS = frozenset({"GET", "HEAD"})
DEVICE_ENDPOINT = "configs.get_device_config"
SCHEME = "bearerAuth"
VERIFIED_CACHE_SIZE = 1024


class InvalidToken(Exception):
    """A token we cannot accept; `reason` is the metric label, `message` the client's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`realm_access.roles`), or None."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def roles_in(value: Any) -> set[str]:
    """Roles from a list claim, or from a space-separated string such as `scope`."""
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()


class AccessControl:
    """Extension: bearer tokens on /api/configs, rights from roles or a device claim, audit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def init_app(self, app: Quart) -> None:
        if self.settings.oidc_issuer is None:
            self._warn_if_open()
            return
        from quart_iot.tokens import KeySet, TokenVerifier

        self.keys = KeySet(self.settings, self._count_fetch)
        self.verifier = TokenVerifier(self.settings, self.keys)
        app.extensions["access_control"] = self
        registry = app.extensions["metrics"].registry
        self.decisions = Counter(
            "iot_auth_decisions_total", "Access decisions by result and reason.", registry=registry
        )
        self.fetches = Counter(
            "iot_auth_jwks_fetches_total", "Fetches of the issuer's keys.", registry=registry
        )
        app.before_request(self._authorize)
        app.after_request(self._audit)
        _document_bearer(app)

    def _warn_if_open(self) -> None:
        host = self.settings.host
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            log.warning(
                "access control is off (no OIDC_ISSUER) and the service listens on %s: "
                "anyone who reaches it can read and rewrite every config",
                host,
            )

    def _count_fetch(self, outcome: str) -> None:
        self.fetches.inc({"outcome": outcome})

    async def _authorize(self) -> None:
        path = request.path
        if request.method == "OPTIONS" or not (
            path == PROTECTED or path.startswith(PROTECTED + "/")
        ):
            return
        try:
            claims = await self.verifier.claims(bearer_token())
        except InvalidToken as error:
            self._decide("unauthorized", error.reason)
            raise Unauthorized(error.message, invalid_token=error.reason != "missing") from None
        g.auth_claims = claims
        reason = self._right(claims)
        if reason not in ("reader", "writer", "device"):
            self._decide("forbidden", reason)
            raise Forbidden("This token does not allow this request")
        self._decide("allowed", reason)

    def _right(self, claims: dict[str, Any]) -> str:
        """The right that allows this request (reader, writer, device), else why it is refused."""
        settings = self.settings
        device = claim_at(claims, settings.oidc_device_claim)
        if device is not None:  # a device token reads its own document and nothing else
            mac = (request.view_args or {}).get("mac_address")
            own = isinstance(device, str) and str(mac).lower() == device.lower()
            reading = request.endpoint == DEVICE_ENDPOINT and request.method in READ_METHODS
            return "device" if own and reading else "device_scope"
        roles = roles_in(claim_at(claims, settings.oidc_roles_claim))
        if settings.oidc_write_role in roles:
            return "writer"
        if request.method in READ_METHODS and settings.oidc_read_role in roles:
            return "reader"
        return "no_role"

    def _decide(self, result: str, reason: str) -> None:
        g.auth_result = result
        self.decisions.inc({"result": result, "reason": reason})

    async def _audit(self, response: Response) -> Response:
        # Refusals only: a write allowed is audited by quart_iot/audit.py, from the store.
        result = g.get("auth_result")
        if result in (None, "allowed") or request.method in {*READ_METHODS, "OPTIONS"}:
            return response
        audit_log.info(
            "audit: %s %s %s %s by %s; etag before none, after none",
            request.method,
            _printable(str((request.view_args or {}).get("mac_address", request.path))),
            response.status_code,
            result,
            audit_subject(),
        )
        return response


def bearer_token() -> str:
    """The token of `Authorization: Bearer <token>`, or a 401 without an error code."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidToken("missing", "A bearer token is required: Authorization: Bearer <token>")
    token = token.strip()
    if not token or len(token) > 16384:
        raise InvalidToken("malformed", "The access token is not a JWT")
    return token


def subject(claims: dict[str, Any]) -> str:
    """Who the token speaks for: sub, and the client or user name when present (log-safe)."""
    parts = []
    for name in ("sub", "client_id", "azp", "preferred_username"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            parts.append(f"{name}={_printable(value)}")
    return " ".join(parts) or "anonymous"


def audit_subject() -> str:
    """Who made this request, as the audit line names them."""
    return subject(g.get("auth_claims") or {})


def writer_subject() -> str | None:
    """Who makes this request's write, for the history: the token's `sub` (else its client);
    None when access control is off."""
    claims = g.get("auth_claims")
    if not claims:
        return None
    for name in ("sub", "client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return "anonymous"


def _printable(value: str) -> str:
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in value[:80])


def _document_bearer(app: Quart) -> None:
    """The OpenAPI document declares the bearer scheme (and 401/403) on every config route."""
    schema = app.extensions["QUART_SCHEMA"]
    schema.security_schemes = {
        **(schema.security_schemes or {}),
        SCHEME: HttpSecurityScheme(scheme="bearer", bearer_format="JWT"),
    }
    base = type(schema.openapi_provider)

    class SecuredProvider(base):  # type: ignore[valid-type,misc]  # the app's own provider
        def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
            paths, components = super().build_paths(rule)
            if rule.rule.startswith(PROTECTED):
                for operations in paths.values():
                    for operation in operations.values():
                        _secure(operation)
            return paths, components

    schema.openapi_provider = SecuredProvider(app, schema)


def _secure(operation: dict[str, Any]) -> None:
    operation["security"] = [{SCHEME: []}]
    error = operation["responses"].get("500", {})
    for status, description in (("401", "No valid bearer token"), ("403", "Not allowed")):
        operation["responses"][status] = {**error, "description": description}
