"""Access control: OpenID Connect bearer tokens (JWT access tokens) for people and devices."""

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from aioprometheus.collectors import Counter
from quart import Quart, Response, g, request
from quart_schema.openapi import HttpSecurityScheme
from werkzeug.routing import Rule

from quart_iot.errors import ApiError, Forbidden, Unauthorized
from quart_iot.settings import Settings
from quart_iot.store import current_store

log = logging.getLogger(__name__)
audit_log = logging.getLogger("quart_iot.audit")

PROTECTED = "/api/configs"
READ_METHODS = frozenset({"GET", "HEAD"})
DEVICE_ENDPOINT = "configs.get_device_config"
SCHEME = "bearerAuth"
VERIFIED_CACHE_SIZE = 1024
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# What each refusal tells the client (and its metric reason); never the token itself.
_INVALID = {
    jwt.ExpiredSignatureError: ("expired", "The access token has expired"),
    jwt.ImmatureSignatureError: ("not_yet_valid", "The access token is not valid yet"),
    jwt.InvalidIssuerError: ("wrong_issuer", "The access token is from another issuer"),
    jwt.InvalidAudienceError: ("wrong_audience", "The access token is for another audience"),
    jwt.MissingRequiredClaimError: ("missing_claim", "The access token lacks a required claim"),
    jwt.InvalidSignatureError: ("bad_signature", "The access token signature is invalid"),
}


class InvalidToken(Exception):
    """A token we cannot accept; `reason` is the metric label, `message` the client's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SigningKey:
    """One public key of the issuer, its type, and the algorithm it names (if any)."""

    key: Any
    kty: str
    alg: str | None

    def fits(self, alg: str) -> bool:
        """Whether `alg` belongs to this key's type (and to its own `alg`, when it names one)."""
        return _KEY_TYPES.get(alg[:2]) == self.kty and self.alg in (None, alg)


@dataclass
class Keys:
    """The issuer's signing keys by kid, and the algorithms it publishes."""

    by_kid: dict[str, SigningKey]
    algorithms: frozenset[str]
    loaded_at: float


class KeySet:
    """The issuer's JWKS: cached, refreshed for an unknown kid at most once per interval."""

    def __init__(self, settings: Settings, on_fetch: Callable[[str], None]) -> None:
        self.issuer = settings.oidc_issuer or ""
        self.allowed = frozenset(settings.oidc_algorithms)
        self.timeout = settings.oidc_http_timeout
        self.min_refresh = settings.oidc_jwks_min_refresh
        self.max_age = settings.oidc_jwks_max_age
        self.on_fetch = on_fetch
        self.keys = Keys({}, frozenset(), 0.0)
        self._last_attempt = -float("inf")
        self._refreshing: asyncio.Task[None] | None = None

    async def key(self, kid: str | None) -> tuple[SigningKey, frozenset[str]]:
        """The key for `kid` (a refresh first when it is unknown), with the allowed algorithms."""
        if self._find(kid) is None:
            await self._refresh(wait=True)
        elif time.monotonic() - self.keys.loaded_at > self.max_age:
            await self._refresh(wait=False)  # known key: serve now, refresh in the background
        key = self._find(kid)
        if key is None:
            raise InvalidToken("unknown_key", "The access token is signed with an unknown key")
        return key, self.keys.algorithms

    def _find(self, kid: str | None) -> SigningKey | None:
        by_kid = self.keys.by_kid
        if kid is None and len(by_kid) == 1:
            return next(iter(by_kid.values()))  # an issuer with one key may omit the kid
        return by_kid.get(kid) if kid is not None else None

    async def _refresh(self, wait: bool) -> None:
        if self._refreshing is None or self._refreshing.done():
            if time.monotonic() - self._last_attempt < self.min_refresh:
                return  # rate limit: an unknown kid cannot make us hammer the issuer
            self._last_attempt = time.monotonic()
            self._refreshing = asyncio.create_task(self._load())
        if wait:  # shielded: one cancelled request does not cancel the fetch others await
            await asyncio.shield(self._refreshing)

    async def _load(self) -> None:
        try:
            async with asyncio.timeout(self.timeout), httpx.AsyncClient(timeout=self.timeout) as c:
                self.keys = await self._fetch(c)
            self.on_fetch("ok")
        except (httpx.HTTPError, TimeoutError, ValueError, KeyError, TypeError) as error:
            # Cached keys stay in use; a token with an unknown key gets a 401.
            log.warning("could not refresh the OIDC signing keys: %s", type(error).__name__)
            self.on_fetch("error")

    async def _fetch(self, client: httpx.AsyncClient) -> Keys:
        discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        discovery = _json_object(await client.get(discovery_url))
        if discovery.get("issuer") != self.issuer:
            raise ValueError("the discovery document names another issuer")
        published = discovery.get("id_token_signing_alg_values_supported")
        algorithms = self.allowed & set(published) if isinstance(published, list) else self.allowed
        jwks = _json_object(await client.get(str(discovery["jwks_uri"])))
        keys = (_signing_key(data) for data in jwks["keys"])
        by_kid = {kid: key for kid, key in keys if key is not None}
        return Keys(by_kid, frozenset(algorithms), time.monotonic())


def _signing_key(data: Any) -> tuple[str, SigningKey | None]:
    """A JWKS entry as a public signing key; None for symmetric, encryption or broken ones."""
    if not isinstance(data, dict) or data.get("use", "sig") != "sig" or "kid" not in data:
        return "", None
    if data.get("kty") not in ("RSA", "EC", "OKP"):  # never a symmetric (oct) key
        return "", None
    try:
        key = jwt.PyJWK(data).key
    except jwt.PyJWTError:
        return "", None
    alg = data.get("alg")
    return str(data["kid"]), SigningKey(key, data["kty"], alg if isinstance(alg, str) else None)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    response.raise_for_status()
    body = response.json()
    if not isinstance(body, dict):
        raise TypeError("not a JSON object")
    return body


class TokenVerifier:
    """Checks a JWT access token: signature against the issuer's keys, iss, aud, exp, nbf."""

    def __init__(self, settings: Settings, keys: KeySet) -> None:
        self.keys = keys
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.leeway = settings.oidc_leeway
        # Tokens already verified against the current keys: a client sends the same token
        # many times, and the signature check is most of a request's cost. Bounded; cleared
        # when the keys change; a hit still honours `exp`.
        self._verified: dict[str, tuple[dict[str, Any], float]] = {}

    async def claims(self, token: str) -> dict[str, Any]:
        hit = self._verified.get(token)
        fresh = hit is not None and hit[1] == self.keys.keys.loaded_at
        if hit is not None and fresh and time.time() <= hit[0]["exp"] + self.leeway:
            return hit[0]
        claims = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (claims, self.keys.keys.loaded_at)
        return claims

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidToken("malformed", "The access token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.keys.allowed:
            raise InvalidToken("algorithm", "The access token's algorithm is not accepted")
        key, algorithms = await self.keys.key(kid if isinstance(kid, str) else None)
        if alg not in algorithms or not key.fits(alg):
            raise InvalidToken("algorithm", "The access token's algorithm does not fit its key")
        return self._decode(token, key, alg)

    def _decode(self, token: str, key: SigningKey, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as error:
            reason, message = _INVALID.get(type(error), ("invalid", "The access token is invalid"))
            raise InvalidToken(reason, message) from None


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
        self.keys = KeySet(settings, self._count_fetch)
        self.verifier = TokenVerifier(settings, self.keys)

    def init_app(self, app: Quart) -> None:
        if self.settings.oidc_issuer is None:
            self._warn_if_open()
            return
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
        if request.method not in READ_METHODS:
            g.audit_etag_before = await etag_before()

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
        result = g.get("auth_result")
        if result is None or request.method in READ_METHODS or request.method == "OPTIONS":
            return response
        before = g.get("audit_etag_before")
        after = response.headers.get("ETag") if response.status_code == 200 else before
        if request.method == "DELETE" and response.status_code == 204:
            after = None
        audit_log.info(
            "audit: %s %s %s %s by %s; etag before %s, after %s",
            request.method,
            _printable(str((request.view_args or {}).get("mac_address", request.path))),
            response.status_code,
            result,
            subject(g.get("auth_claims") or {}),
            before or "none",
            after or "none",
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


async def etag_before() -> str | None:
    """The ETag as last seen before the write, quoted as HTTP shows it (None when absent)."""
    try:
        etag = await current_store().current_etag((request.view_args or {})["mac_address"])
    except (ApiError, KeyError):
        return None
    return f'"{etag}"'


def subject(claims: dict[str, Any]) -> str:
    """Who the token speaks for: sub, and the client or user name when present (log-safe)."""
    parts = []
    for name in ("sub", "client_id", "azp", "preferred_username"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            parts.append(f"{name}={_printable(value)}")
    return " ".join(parts) or "anonymous"


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
