"""A real OpenID Provider (oidc-provider on Node.js, tests/oidc/) on loopback, and test keys."""

import base64
import fcntl
import hashlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.server import TLS, free_port
from tests.tools import tool

DIRECTORY = Path(__file__).parent / "oidc"
AUDIENCE = "urn:quart-iot"
CLIENTS = {c["client_id"]: c for c in json.loads((DIRECTORY / "clients.json").read_text())}


def install() -> None:
    """`npm ci` from the committed package-lock.json, once (a fresh clone has no node_modules)."""
    tool("node", "Debian package nodejs")
    tool("npm", "Debian package npm")
    # Parallel test workers (pytest-xdist) install one at a time: `npm ci` empties
    # node_modules first, under the feet of a worker whose provider already runs.
    with (Path(tempfile.gettempdir()) / "quart_iot-oidc-npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (DIRECTORY / "node_modules" / "oidc-provider").is_dir():
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=DIRECTORY,
                check=True,
                timeout=300,
            )


class SigningKey:
    """An RSA key as the provider holds it (private JWK) and as tests sign with it."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private))
        jwk.pop("key_ops", None)
        self.jwk: dict[str, Any] = {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        """An RFC 9068 access token (`typ: at+jwt`) unless `header` says otherwise."""
        headers = {"kid": self.kid, "typ": "at+jwt", **header}
        return jwt.encode(claims, self.private, "RS256", headers=headers)

    def sign_raw(self, header: Any, claims: Any) -> str:
        """Any JSON (or bytes) as header and payload, signed RS256: what PyJWT will not make."""
        parts = [
            part if isinstance(part, bytes) else json.dumps(part).encode()
            for part in (header, claims)
        ]
        signing_input = ".".join(b64(part) for part in parts).encode()
        signature = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(
            signing_input, self.private
        )
        return f"{signing_input.decode()}.{b64(signature)}"

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class Provider:
    """`node provider.mjs` on a loopback port; restartable on the same port with other keys."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys_file = Path(tempfile.mkstemp(prefix="oidc-keys-", suffix=".json")[1])
        self.log = Path(tempfile.mkstemp(prefix="oidc-provider-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.keys = keys

    def start(self, timeout: float = 20.0) -> None:
        self.keys_file.write_text(json.dumps({"keys": [key.jwk for key in self.keys]}))
        env = {**os.environ, "PORT": str(self.port), "AUDIENCE": AUDIENCE}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["node", "provider.mjs"],
                cwd=DIRECTORY,
                env={**env, "KEYS": str(self.keys_file)},
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"provider exited: {self.log.read_text()}")
            try:
                httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1, verify=TLS)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("provider did not start in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def restart(self, keys: list[SigningKey]) -> None:
        self.stop()
        self.keys = keys
        self.start()

    def close(self) -> None:
        self.stop()
        self.keys_file.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)

    def token(self, client_id: str, **params: str) -> str:
        """An access token from the provider's token endpoint (client-credentials grant)."""
        response = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "resource": AUDIENCE, **params},
            auth=(client_id, CLIENTS[client_id]["client_secret"]),
            timeout=10,
            verify=TLS,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def login(self, client_id: str, nonce: str | None = None) -> dict[str, Any]:
        """A person's login through the authorization-code flow (PKCE; the provider's own
        login form, which takes any name): the token response, ID token included."""
        client = CLIENTS[client_id]
        redirect_uri = client["redirect_uris"][0]
        verifier = secrets.token_urlsafe(48)
        challenge = b64(hashlib.sha256(verifier.encode()).digest())
        query = {
            "client_id": client_id,
            "response_type": "code",
            "scope": "openid",
            "redirect_uri": redirect_uri,
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **({"nonce": nonce} if nonce else {}),
        }
        with httpx.Client(base_url=self.issuer, timeout=10, verify=TLS) as http:
            location = http.get("/auth", params=query).headers["location"]
            while not location.startswith(redirect_uri):
                if "/interaction/" in location:  # the login form, then the consent form
                    form = http.get(location).text
                    prompt = "login" if 'name="login"' in form else "consent"
                    answer = {"prompt": prompt, "login": "alice", "password": "any"}
                    location = http.post(location, data=answer).headers["location"]
                else:
                    location = http.get(location).headers["location"]
            code = parse_qs(urlsplit(location).query)["code"][0]
            response = http.post(
                "/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
                auth=(client_id, client["client_secret"]),
            )
        response.raise_for_status()
        tokens: dict[str, Any] = response.json()
        return tokens


@contextmanager
def running_provider() -> Iterator[Provider]:
    """The provider installed and started with one signing key; closed at the end."""
    install()
    provider = Provider([SigningKey("k1")])
    provider.start()
    try:
        yield provider
    finally:
        provider.close()


def unverified_kid(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class StaticIssuer:
    """An issuer that misbehaves: a loopback HTTP server answering each path with fixed bytes
    (`routes`, filled by the test; `{url}` in a body becomes the server's own URL)."""

    def __init__(self) -> None:
        routes: dict[str, tuple[int, bytes]] = {}
        self.routes = routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = routes.get(self.path, (404, b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve(self, path: str, body: Any, status: int = 200) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.routes[path] = (status, data.replace(b"{url}", self.url.encode()))

    def __enter__(self) -> "StaticIssuer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
