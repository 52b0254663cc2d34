"""Access tokens: the issuer's signing keys (fetched, cached, refreshed) and JWT verification.

Imported only when access control is on (OIDC_ISSUER): PyJWT, cryptography and httpx cost a
process about 12 MiB that an open service never uses.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from quart_iot.auth import VERIFIED_CACHE_SIZE, InvalidToken
from quart_iot.settings import Settings

log = logging.getLogger("quart_iot.auth")

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
