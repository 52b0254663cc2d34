"""AccessControl: OpenID Connect bearer tokens (JWT access tokens) for people and devices."""

import logging
from urllib.parse import urlsplit

from aioprometheus.collectors import Counter
from quart import Quart, Response, current_app, g, jsonify, request
from quart_schema import document_response

from quart_iot.apidocs import document_errors
from quart_iot.metrics import Metrics
from quart_iot.oidc.audit import audit_line, audit_log, audit_subject
from quart_iot.oidc.errors import Forbidden, InvalidRequest, InvalidToken, Unauthorized
from quart_iot.oidc.identity import Identity, subject_of
from quart_iot.oidc.openapi import document_bearer
from quart_iot.oidc.policy import (
    EVENTS_ENDPOINT,
    READ_METHODS,
    RIGHTS,
    TICKETS_ENDPOINT,
    TICKETS_PATH,
    Access,
    Policy,
    is_protected,
)
from quart_iot.oidc.tickets import StreamTicket, StreamTickets
from quart_iot.settings import Settings, is_loopback

log = logging.getLogger("quart_iot.oidc")


class AccessControl:
    """Extension: bearer tokens on /api/configs, rights from roles or a device claim, stream
    tickets for browsers, and the audit line of each write. Off without OIDC_ISSUER."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.oidc_issuer is not None

    @classmethod
    def of(cls, app: Quart) -> "AccessControl":
        """The app's AccessControl extension."""
        extension = app.extensions["access_control"]
        assert isinstance(extension, cls)
        return extension

    def init_app(self, app: Quart) -> None:
        app.extensions["access_control"] = self
        if not self.enabled:
            self._warn_if_open()
            return
        from quart_iot.oidc.keys import KeySet  # PyJWT and httpx: only with access control on
        from quart_iot.oidc.verification import TokenVerifier

        self.verifier = TokenVerifier(self.settings, KeySet(self.settings, self._count_fetch))
        self.policy = Policy(self.settings)
        self.tickets = StreamTickets(self.settings.secret_key)
        self._warn_if_plain_http()
        registry = Metrics.of(app).registry
        self.decisions = Counter(
            "iot_auth_decisions_total", "Access decisions by result and reason.", registry=registry
        )
        self.fetches = Counter(
            "iot_auth_jwks_fetches_total", "Fetches of the issuer's keys.", registry=registry
        )
        app.before_request(self._authorize)
        app.after_request(self._audit)
        app.add_url_rule(TICKETS_PATH, TICKETS_ENDPOINT, self.issue_ticket, methods=["POST"])
        document_bearer(app)

    def _warn_if_plain_http(self) -> None:
        issuer = urlsplit(self.settings.oidc_issuer)
        if issuer.scheme == "http" and not is_loopback(issuer.hostname or ""):
            log.warning(
                "OIDC_ISSUER is http:// (OIDC_ALLOW_HTTP_ISSUER): whoever can change the traffic "
                "to %s can hand this service their own signing keys",
                issuer.hostname,
            )

    def _warn_if_open(self) -> None:
        host = self.settings.host
        if not is_loopback(host):
            log.warning(
                "access control is off (no OIDC_ISSUER) and the service listens on %s: "
                "anyone who reaches it can read and rewrite every config",
                host,
            )

    def _count_fetch(self, outcome: str) -> None:
        self.fetches.inc({"outcome": outcome})

    async def _authorize(self) -> None:
        if request.method == "OPTIONS" or not is_protected(request.path):
            return
        try:
            identity = await self._identify()
        except InvalidToken as error:
            self._decide("unauthorized", error.reason)
            raise Unauthorized(error.message, invalid_token=error.reason != "missing") from None
        except InvalidRequest:
            self._decide("invalid_request", "credentials")
            raise
        if identity.right not in RIGHTS:
            self._decide("forbidden", identity.right)
            raise Forbidden("This token does not allow this request")
        self._decide("allowed", identity.right)
        g.oidc_identity = identity

    async def _identify(self) -> Identity:
        """Who asks, from the bearer token (or, on the event stream, a stream ticket), with
        the right the policy gives them for this request."""
        ticket = request.args.get("ticket") if request.endpoint == EVENTS_ENDPOINT else None
        authorization = request.headers.getlist("Authorization")
        if len(authorization) + (ticket is not None) > 1:
            raise InvalidRequest("Send one credential: one Authorization header, or a ticket")
        if ticket is not None:
            return self.tickets.redeem(ticket)  # its right was decided when it was issued
        claims = await self.verifier.claims(bearer_token(authorization))
        g.auth_claims = claims
        subject = subject_of(claims)
        assert subject is not None  # the verifier refuses a token without one
        return Identity(subject, self.policy.right(claims, Access.of(request)), claims["exp"])

    def _decide(self, result: str, reason: str) -> None:
        g.auth_result = result
        self.decisions.inc({"result": result, "reason": reason})

    @document_response(StreamTicket)
    @document_errors()
    async def issue_ticket(self) -> Response:
        """A single-use ticket to open the event stream from a browser (`?ticket=`)."""
        identity = current_identity()
        assert identity is not None  # _authorize let the request in
        response = jsonify(self.tickets.issue(identity).model_dump())
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _audit(self, response: Response) -> Response:
        # Refusals only: a write allowed is audited from the store's write events
        # (quart_iot/audit.py), whatever its client does.
        result = g.get("auth_result")
        if result in (None, "allowed") or not is_write():
            return response
        target = (request.view_args or {}).get("mac_address", request.path)
        line = audit_line(
            request.method,
            str(target),
            response.status_code,
            result,
            current_audit_subject(),
            None,
            None,
        )
        audit_log.info("%s", line)
        return response


def is_write() -> bool:
    """Whether this request may change the store (the audit's, until the store's events)."""
    return request.method not in READ_METHODS and request.endpoint != TICKETS_ENDPOINT


def bearer_token(authorization: list[str]) -> str:
    """The token of `Authorization: Bearer <token>`, else a 401 without an error code."""
    scheme, _, token = (authorization[0] if authorization else "").partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidToken("missing", "A bearer token is required: Authorization: Bearer <token>")
    token = token.strip()
    if not token:
        raise InvalidToken("malformed", "The access token is not a well-formed JWT")
    return token


def current_access_control() -> AccessControl:
    """The AccessControl extension of the running app."""
    return AccessControl.of(current_app)


def current_identity() -> Identity | None:
    """Who makes the current request: None when anonymous (access control off, or a route
    that needs no token)."""
    identity = g.get("oidc_identity")
    return identity if isinstance(identity, Identity) else None


def token_expiry() -> float | None:
    """When the current request's token (or stream ticket's token) expires, in seconds since
    the epoch; None when anonymous. An event stream ends then (quart_iot.waiting)."""
    identity = current_identity()
    return identity.expires_at if identity is not None else None


def request_subject() -> str | None:
    """The subject of the current request (`sub:alice`), None when anonymous."""
    identity = current_identity()
    return identity.subject if identity is not None else None


def current_audit_subject() -> str:
    """Who makes the current request, as the audit line names them
    (`sub:alice client_id:spa preferred_username:alice`; `anonymous` without a token)."""
    return audit_subject(g.get("auth_claims") or {})


def writer_subject() -> str | None:
    """Who makes this request's write, for the history (`sub:alice`, or `client_id:...` for
    a token without `sub`); None when access control is off."""
    return request_subject()
