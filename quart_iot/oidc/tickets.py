"""Stream tickets: how a browser follows the event stream with access control on.

`EventSource` cannot send an `Authorization` header, and a bearer token in a URL would be
written to every proxy's access log and the browser's history, valid for as long as the
token. So a page asks `POST /api/configs/events/tickets` with its bearer token, and opens
`/api/configs/events?ticket=<ticket>`: a ticket is valid for TICKET_SECONDS (never past the
token's own expiry), once, on the event stream only, and carries the token's subject, right
and expiry (the stream ends when the token would have).

A ticket is signed (HMAC-SHA256 with a key derived from SECRET_KEY), not stored: any process
with the same SECRET_KEY accepts it, so it works whichever worker or replica the browser's
connection reaches. Single use is remembered by the process that accepts it; another process
with the same key would accept the same ticket once more within its TICKET_SECONDS (a limit
docs/API.md states).
"""

import base64
import hashlib
import hmac
import json
import secrets
import time

from pydantic import BaseModel

from quart_iot.oidc.errors import InvalidToken
from quart_iot.oidc.identity import Identity

TICKET_SECONDS = 30
MAX_TICKET = 1024  # characters; one of ours is about 200


class StreamTicket(BaseModel):
    """A single-use ticket for `GET /api/configs/events?ticket=...`."""

    ticket: str
    expires_in: int  # seconds


class StreamTickets:
    """Issues and redeems stream tickets; remembers the ones redeemed here until they expire."""

    def __init__(self, secret: str, seconds: float = TICKET_SECONDS) -> None:
        self.seconds = seconds
        self._key = hashlib.sha256(b"quart_iot stream tickets\0" + secret.encode()).digest()
        self._used: dict[str, float] = {}  # nonce -> the ticket's expiry
        self._prune_at = 1024

    def issue(self, identity: Identity) -> StreamTicket:
        """A ticket for `identity`, valid `seconds` at most."""
        expires = min(time.time() + self.seconds, identity.expires_at)
        fields = {
            "sub": identity.subject,
            "right": identity.right,
            "exp": identity.expires_at,
            "until": expires,
            "nonce": secrets.token_urlsafe(16),
        }
        payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
        ticket = f"{payload}.{self._signature(payload)}"
        return StreamTicket(ticket=ticket, expires_in=max(0, round(expires - time.time())))

    def redeem(self, ticket: str) -> Identity:
        """The identity a valid ticket carries (it is used up), else InvalidToken."""
        payload, _, signature = ticket.partition(".")
        expected = self._signature(payload)
        if len(ticket) > MAX_TICKET or not hmac.compare_digest(
            signature.encode(), expected.encode()
        ):
            raise InvalidToken("ticket_invalid", "The stream ticket is not valid")
        fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        now = time.time()
        if fields["until"] < now:
            raise InvalidToken("ticket_expired", "The stream ticket has expired")
        self._forget_expired(now)
        if fields["nonce"] in self._used:
            raise InvalidToken("ticket_used", "The stream ticket was used already")
        self._used[fields["nonce"]] = fields["until"]
        return Identity(fields["sub"], fields["right"], fields["exp"])

    def _signature(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def _forget_expired(self, now: float) -> None:
        if len(self._used) >= self._prune_at:  # amortised: a sweep per doubling
            self._used = {nonce: until for nonce, until in self._used.items() if until >= now}
            self._prune_at = max(1024, 2 * len(self._used))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
