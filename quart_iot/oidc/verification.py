"""Verifying a JWT access token: its header, its signature against the issuer's keys, its
claims (iss, aud, exp, nbf, iat), and that it is an access token, not an ID token.

Imported only when access control is on. Every way a token can be malformed is an
InvalidToken (a 401), never an exception of PyJWT's (a 500): a client chooses every byte.
"""

import base64
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import jwt

from quart_iot.oidc.errors import InvalidToken
from quart_iot.oidc.identity import subject_of
from quart_iot.oidc.keys import KeySet, SigningKey
from quart_iot.settings import Settings

VERIFIED_CACHE_SIZE = 1024
MAX_TOKEN = 16384  # characters; a JWT access token is a few hundred to a few thousand
# RFC 9068: a JWT access token says so in its header (`typ`, media type `application/at+jwt`).
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Claims only an ID token carries (OpenID Connect Core 2, 3.3.2.11): never an access token.
ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")
TIME_CLAIMS = ("exp", "nbf", "iat")
LATEST_TIME = 1e11  # seconds since the epoch (year 5138): a bound a float holds exactly
# What each refusal tells the client (and its metric reason); never the token itself.
_INVALID = {
    jwt.DecodeError: ("malformed", "The access token is not a well-formed JWT"),
    jwt.InvalidIssuerError: ("wrong_issuer", "The access token is from another issuer"),
    jwt.InvalidAudienceError: ("wrong_audience", "The access token is for another audience"),
    jwt.MissingRequiredClaimError: ("missing_claim", "The access token lacks a required claim"),
    jwt.InvalidSignatureError: ("bad_signature", "The access token signature is invalid"),
}


@dataclass(frozen=True, slots=True)
class Verified:
    """A token's claims, and the key set they were verified against."""

    claims: dict[str, Any]
    loaded_at: float


def malformed() -> InvalidToken:
    return InvalidToken("malformed", "The access token is not a well-formed JWT")


def parse_header(token: str) -> dict[str, Any]:
    """A compact JWS's header as a JSON object, parsed here rather than by PyJWT, whose own
    checks of it raise whatever they raise (and quote the header in their messages)."""
    segment = token.partition(".")[0]
    if len(token) > MAX_TOKEN or token.count(".") != 2:
        raise malformed()
    try:
        decoded = base64.b64decode(segment + "=" * (-len(segment) % 4), b"-_", validate=True)
        header = json.loads(decoded)
    except (ValueError, RecursionError):  # not base64, not UTF-8, not JSON, nested too deep
        raise malformed() from None
    if not isinstance(header, dict):
        raise malformed()
    return header


def check_times(claims: dict[str, Any], leeway: float) -> None:
    """`exp` (required), `nbf` and `iat` are numbers of seconds, and the token is valid now."""
    for name in TIME_CLAIMS:
        value = claims.get(name)
        if name in claims and not is_time(value):
            raise InvalidToken("malformed_claim", f"The access token's {name} is not a number")
    now = time.time()
    if claims["exp"] + leeway < now:
        raise InvalidToken("expired", "The access token has expired")
    if claims.get("nbf", now) - leeway > now or claims.get("iat", now) - leeway > now:
        raise InvalidToken("not_yet_valid", "The access token is not valid yet")


def is_time(value: Any) -> bool:
    """A JSON number of seconds since the epoch (not a string, a boolean, NaN or 1e400)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and 0 <= value <= LATEST_TIME


def check_kind(claims: dict[str, Any]) -> None:
    """An ID token is not an access token, whatever its header says."""
    if any(name in claims for name in ID_TOKEN_CLAIMS) or str(claims.get("typ")).lower() == "id":
        raise InvalidToken("not_access_token", "The token is an ID token, not an access token")


class TokenVerifier:
    """Checks a JWT access token: header, signature against the issuer's keys, claims."""

    def __init__(self, settings: Settings, keys: KeySet) -> None:
        self.keys = keys
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.leeway = settings.oidc_leeway
        self.plain_jwt = settings.oidc_allow_plain_jwt
        # Tokens already verified against the current keys: a client sends the same token
        # many times, and the signature check is most of a request's cost. Bounded; a hit
        # counts only for the keys it was verified against, and still honours `exp`.
        self._verified: dict[str, Verified] = {}

    async def claims(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token, else InvalidToken."""
        keys = await self.keys.current()  # the scheduled refresh, before any cache hit
        hit = self._verified.get(token)
        if hit is not None and hit.loaded_at == keys.loaded_at:
            check_times(hit.claims, self.leeway)
            return hit.claims
        claims = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = Verified(claims, self.keys.keys.loaded_at)
        return claims

    async def _verify(self, token: str) -> dict[str, Any]:
        header = self._header(token)
        alg, kid = header["alg"], header.get("kid")
        key, algorithms = await self.keys.key(kid)
        if alg not in algorithms or not key.fits(alg):
            raise InvalidToken("algorithm", "The access token's algorithm does not fit its key")
        claims = self._decode(token, key, alg)
        check_times(claims, self.leeway)
        check_kind(claims)
        if subject_of(claims) is None:
            raise InvalidToken("missing_claim", "The access token names no subject (sub)")
        return claims

    def _header(self, token: str) -> dict[str, Any]:
        """The JOSE header, checked before any key is fetched (anyone may send anything)."""
        header = parse_header(token)
        if "crit" in header:  # RFC 7515 4.1.11: extensions we must understand; we know none
            raise InvalidToken("critical_header", "The access token has a critical header")
        alg, typ = header.get("alg"), header.get("typ")
        if not isinstance(alg, str) or alg not in self.keys.allowed:
            raise InvalidToken("algorithm", "The access token's algorithm is not accepted")
        if any(name in header and not isinstance(header[name], str) for name in ("kid", "typ")):
            raise malformed()  # "kid": null, 1, ["k1"]...
        if str(typ).lower() not in ACCESS_TOKEN_TYPES and not self.plain_jwt:
            raise InvalidToken("not_access_token", "The token is not a JWT access token (at+jwt)")
        return header

    def _decode(self, token: str, key: SigningKey, alg: str) -> dict[str, Any]:
        """The claims, once signature, `iss` and `aud` are checked (times: `check_times`)."""
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,  # check_times: PyJWT takes "1e9" or fails on 1e400
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as error:  # a payload that is not JSON (or nested too deep) too
            reason, message = _INVALID.get(type(error), ("invalid", "The access token is invalid"))
            raise InvalidToken(reason, message) from None
