"""A real OpenID Provider (oidc-provider on Node.js, tests/oidc/) on loopback, and test keys."""

import base64
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.server import free_port
from tests.tools import tool

DIRECTORY = Path(__file__).parent / "oidc"
AUDIENCE = "urn:quart-iot"
CLIENTS = {c["client_id"]: c for c in json.loads((DIRECTORY / "clients.json").read_text())}


def install() -> None:
    """`npm ci` from the committed package-lock.json, once (a fresh clone has no node_modules)."""
    tool("node", "Debian package nodejs")
    tool("npm", "Debian package npm")
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
        return jwt.encode(claims, self.private, "RS256", headers={"kid": self.kid, **header})

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
                httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1)
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
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token


def unverified_kid(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
