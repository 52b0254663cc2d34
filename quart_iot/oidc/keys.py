"""The issuer's signing keys (its JWKS): fetched, cached, refreshed on schedule.

Imported only when access control is on (OIDC_ISSUER): PyJWT, cryptography and httpx cost a
process about 12 MiB that an open service never uses.
"""

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
import jwt

from quart_iot.oidc.errors import InvalidToken
from quart_iot.settings import Settings

log = logging.getLogger("quart_iot.oidc")

MAX_DOCUMENT = 1024 * 1024  # bytes of a discovery document or a JWKS: larger is a failure
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class IssuerError(Exception):
    """The issuer's answer is not one we can use."""


@dataclass(frozen=True)
class SigningKey:
    """One public key of the issuer, its type, and the algorithm it names (if any)."""

    key: Any
    kty: str
    alg: str | None

    def fits(self, alg: str) -> bool:
        """Whether `alg` belongs to this key's type (and to its own `alg`, when it names one)."""
        return _KEY_TYPES.get(alg[:2]) == self.kty and self.alg in (None, alg)


@dataclass(frozen=True)
class Keys:
    """The issuer's signing keys by kid, the algorithms it publishes, and when they came."""

    by_kid: dict[str, SigningKey]
    algorithms: frozenset[str]
    loaded_at: float  # time.monotonic(); -inf before the first fetch


class KeySet:
    """The issuer's JWKS: fetched for an unknown kid, and again once older than
    OIDC_JWKS_MAX_AGE; never more than once per OIDC_JWKS_MIN_REFRESH, whatever arrives."""

    def __init__(self, settings: Settings, on_fetch: Callable[[str], None]) -> None:
        self.issuer = settings.oidc_issuer or ""
        self.allowed = frozenset(settings.oidc_algorithms)
        self.timeout = settings.oidc_http_timeout
        self.min_refresh = settings.oidc_jwks_min_refresh
        self.max_age = settings.oidc_jwks_max_age  # >= min_refresh (settings check it)
        self.on_fetch = on_fetch
        self.keys = Keys({}, frozenset(), -float("inf"))
        self._last_attempt = -float("inf")
        self._refreshing: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None  # built by the first fetch, kept for the others

    async def current(self) -> Keys:
        """The keys, fetched again first when they are older than OIDC_JWKS_MAX_AGE: every
        request meets the schedule, a token verified before (and remembered) included."""
        if time.monotonic() - self.keys.loaded_at >= self.max_age:
            await self._refresh()
        return self.keys

    async def key(self, kid: str | None) -> tuple[SigningKey, frozenset[str]]:
        """The key for `kid` (a refresh first when it is unknown), with the allowed algorithms."""
        if self._find(kid) is None:
            await self._refresh()
        key = self._find(kid)
        if key is None:
            raise InvalidToken("unknown_key", "The access token is signed with an unknown key")
        return key, self.keys.algorithms

    def _find(self, kid: str | None) -> SigningKey | None:
        by_kid = self.keys.by_kid
        if kid is None and len(by_kid) == 1:
            return next(iter(by_kid.values()))  # an issuer with one key may omit the kid
        return by_kid.get(kid) if kid is not None else None

    async def _refresh(self) -> None:
        """Fetch the keys (or join the fetch under way), unless one began too recently."""
        if self._refreshing is None or self._refreshing.done():
            if time.monotonic() - self._last_attempt < self.min_refresh:
                return  # rate limit: unknown kids cannot make us hammer the issuer
            self._last_attempt = time.monotonic()
            self._refreshing = asyncio.create_task(self._load())
        # Shielded: one cancelled request does not cancel the fetch others await.
        await asyncio.shield(self._refreshing)

    async def _load(self) -> None:
        try:
            if self._tls is None:  # reads the CA bundle (about 40 ms of CPU): in a thread, once
                self._tls = await anyio.to_thread.run_sync(httpx.create_ssl_context)
            async with (
                asyncio.timeout(self.timeout),
                httpx.AsyncClient(timeout=self.timeout, verify=self._tls) as client,
            ):
                self.keys = await self._fetch(client)
        except Exception as error:  # any failure of the issuer: one warning, then 401s
            # Cached keys stay in use; a token with an unknown key gets a 401.
            log.warning(
                "could not refresh the OIDC signing keys of %s: %s: %.200s",
                self.issuer,
                type(error).__name__,
                error,
            )
            self.on_fetch("error")
        else:
            self.on_fetch("ok")

    async def _fetch(self, client: httpx.AsyncClient) -> Keys:
        discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        discovery = await _json_object(client, discovery_url)
        if discovery.get("issuer") != self.issuer:
            raise IssuerError("the discovery document names another issuer")
        jwks = await _json_object(client, self._jwks_uri(discovery))
        published = discovery.get("id_token_signing_alg_values_supported")
        algorithms = self.allowed & set(published) if isinstance(published, list) else self.allowed
        entries = jwks.get("keys")
        if not isinstance(entries, list):
            raise IssuerError("the JWKS has no list of keys")
        by_kid = dict(key for key in map(_signing_key, entries) if key is not None)
        return Keys(by_kid, frozenset(algorithms), time.monotonic())

    def _jwks_uri(self, discovery: dict[str, Any]) -> str:
        """The discovery document's `jwks_uri`, on the issuer's own scheme: keys from http
        for an https issuer could be anyone's."""
        uri = discovery.get("jwks_uri")
        if not isinstance(uri, str) or not urlsplit(uri).hostname:
            raise IssuerError("the discovery document has no jwks_uri URL")
        url = urlsplit(uri)
        if url.scheme != urlsplit(self.issuer).scheme:
            raise IssuerError(f"the jwks_uri is not on the issuer's scheme: {uri}")
        try:
            url.port  # noqa: B018 - urlsplit checks the port when asked for it
        except ValueError:
            raise IssuerError(f"the jwks_uri has a bad port: {uri}") from None
        return uri


async def _json_object(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """The JSON object at `url`, read up to MAX_DOCUMENT bytes."""
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_DOCUMENT:
                raise IssuerError(f"{url} is larger than {MAX_DOCUMENT} bytes")
    value = json.loads(body)
    if not isinstance(value, dict):
        raise IssuerError(f"{url} is not a JSON object")
    return value


def _signing_key(data: Any) -> tuple[str, SigningKey] | None:
    """A JWKS entry as a public signing key; None for symmetric, encryption or broken ones."""
    if not isinstance(data, dict) or data.get("use", "sig") != "sig":
        return None
    kid, kty, alg = data.get("kid"), data.get("kty"), data.get("alg")
    if not isinstance(kid, str) or kty not in ("RSA", "EC", "OKP"):  # never a symmetric key
        return None
    try:
        key = jwt.PyJWK(data).key
    except Exception:  # a broken entry is skipped, whatever PyJWT or cryptography raise
        return None
    return kid, SigningKey(key, kty, alg if isinstance(alg, str) else None)
