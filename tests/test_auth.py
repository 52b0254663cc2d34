import asyncio
import json
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart

from quart_iot.app import create_app
from quart_iot.errors import ConfigNotFound
from quart_iot.oidc import current_identity, request_subject, token_expiry
from quart_iot.oidc.errors import InvalidToken
from quart_iot.oidc.keys import Keys, KeySet
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore
from tests.conftest import MAC, OTHER_MAC, write_config
from tests.oidc_provider import (
    AUDIENCE,
    Provider,
    SigningKey,
    StaticIssuer,
    b64,
    install,
    unverified_kid,
)
from tests.server import TLS, Server, running_server

ORIGIN = "http://localhost:3000"
NEW_MAC = "12-34-56-78-9a-bc"
ERROR_KEYS = {"error", "code", "details", "correlationId"}
MAX_AGE = 5.0  # OIDC_JWKS_MAX_AGE and OIDC_JWKS_MIN_REFRESH of these tests (the floor)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("k1")


@pytest.fixture(scope="module")
def provider(key: SigningKey) -> Iterator[Provider]:
    install()
    provider = Provider([key])
    provider.start()
    try:
        yield provider
    finally:
        provider.close()


def oidc_env(provider: Provider, **extra: str) -> dict[str, str]:
    return {
        "OIDC_ISSUER": provider.issuer,
        "OIDC_AUDIENCE": AUDIENCE,
        "OIDC_JWKS_MIN_REFRESH": str(MAX_AGE),
        "OIDC_JWKS_MAX_AGE": str(MAX_AGE),
        "LOG_LEVEL": "INFO",
        "CORS_ORIGINS": json.dumps([ORIGIN]),
        **extra,
    }


def oidc_settings(issuer: str, directory: Path, **extra: Any) -> Settings:
    return Settings(
        esp32_configs_dir=directory,
        oidc_issuer=issuer,
        oidc_audience=AUDIENCE,
        _env_file=None,
        **extra,
    )


@pytest.fixture(scope="module")
def server(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("configs")
    write_config(directory, MAC, {"deviceName": "a", "wifiPassword": "secret"})
    write_config(directory, OTHER_MAC, {"deviceName": "b"})
    with running_server(directory, **oidc_env(provider)) as server:
        yield server


@pytest.fixture(scope="module")
def tokens(provider: Provider) -> dict[str, str]:
    clients = ("reader", "writer", "operator", "norole", "device-a", "device-b")
    return {client: provider.token(client) for client in clients}


async def call(
    server: Server, method: str, path: str, token: str | None = None, **kwargs: Any
) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
        return await http.request(method, path, headers=headers, **kwargs)


def assert_refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= ERROR_KEYS
    assert body["code"] == code
    assert body["correlationId"] == response.headers["X-Request-ID"]
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="quart_iot"')
    return body


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def metrics(server: Server) -> str:
    return (await call(server, "GET", "/metrics")).text


async def test_reader_lists_and_gets_but_cannot_write(
    server: Server, tokens: dict[str, str]
) -> None:
    reader = tokens["reader"]
    listing = await call(server, "GET", "/api/configs", reader)
    assert listing.status_code == 200
    assert listing.json()["count"] == 2
    assert (await call(server, "GET", f"/api/configs/{MAC}", reader)).status_code == 200
    assert (await call(server, "GET", f"/api/configs/{OTHER_MAC}.json", reader)).status_code == 200
    put = await call(server, "PUT", f"/api/configs/{MAC}", reader, json={"content": {}})
    assert_refused(put, 403, "FORBIDDEN")
    assert_refused(await call(server, "DELETE", f"/api/configs/{MAC}", reader), 403, "FORBIDDEN")
    assert (await call(server, "GET", f"/api/configs/{MAC}", reader)).json()["device_name"] == "a"


async def test_writer_writes_and_each_write_is_audited(
    server: Server, tokens: dict[str, str]
) -> None:
    writer = tokens["writer"]
    body = {"content": {"deviceName": "new"}}
    put = await call(server, "PUT", f"/api/configs/{NEW_MAC}", writer, json=body)
    assert put.status_code == 200
    etag = put.headers["ETag"]
    assert (await call(server, "GET", f"/api/configs/{NEW_MAC}", writer)).status_code == 200
    assert (await call(server, "DELETE", f"/api/configs/{NEW_MAC}", writer)).status_code == 204
    refused = await call(server, "PUT", f"/api/configs/{NEW_MAC}", tokens["reader"], json=body)
    assert refused.status_code == 403
    audit = [line for line in server.stderr().splitlines() if f"audit: PUT {NEW_MAC}" in line]
    audit += [line for line in server.stderr().splitlines() if f"audit: DELETE {NEW_MAC}" in line]
    assert len(audit) == 3, audit
    created, refusal, deleted = audit[0], audit[1], audit[2]
    assert "by sub:writer client_id:writer preferred_username:admin;" in created
    assert f"etag before none, after {etag}" in created
    assert "403 forbidden by sub:reader" in refusal
    assert "204 allowed by sub:writer client_id:writer preferred_username:admin;" in deleted
    assert f"etag before {etag}, after none" in deleted


async def test_device_reads_only_its_own_document(server: Server, tokens: dict[str, str]) -> None:
    device = tokens["device-a"]
    own = await call(server, "GET", f"/api/configs/{MAC}.json", device)
    assert own.status_code == 200
    assert own.json() == {"deviceName": "a", "wifiPassword": "secret"}
    etag = own.headers["ETag"]
    cached = await call(
        server, "GET", f"/api/configs/{MAC.upper()}.json", device, headers={"If-None-Match": etag}
    )
    assert cached.status_code == 304
    for method, path in [
        ("GET", f"/api/configs/{OTHER_MAC}.json"),
        ("GET", "/api/configs"),
        ("GET", f"/api/configs/{MAC}"),
        ("DELETE", f"/api/configs/{MAC}"),
        ("PUT", f"/api/configs/{MAC}.json"),
        ("POST", "/api/configs/events/tickets"),
    ]:
        assert_refused(await call(server, method, path, device), 403, "FORBIDDEN")
    other = await call(server, "GET", f"/api/configs/{MAC}.json", tokens["device-b"])
    assert_refused(other, 403, "FORBIDDEN")
    assert "secret" not in other.text


async def test_history_reads_need_the_read_role_and_a_restore_the_write_role(
    server: Server, tokens: dict[str, str]
) -> None:
    mac = "12-34-56-78-9a-bd"
    for name in ("first", "second"):
        body = {"content": {"deviceName": name}}
        assert (
            await call(server, "PUT", f"/api/configs/{mac}", tokens["writer"], json=body)
        ).is_success
    history = await call(server, "GET", f"/api/configs/{mac}/history", tokens["reader"])
    assert history.status_code == 200
    first = history.json()["versions"][-1]["version"]
    version = f"/api/configs/{mac}/history/{first}"
    for path in (version, f"{version}/diff", "/api/configs/deleted"):
        assert (await call(server, "GET", path, tokens["reader"])).status_code == 200
        assert_refused(await call(server, "GET", path), 401, "UNAUTHORIZED")
    restore = f"{version}/restore"
    assert_refused(await call(server, "POST", restore, tokens["reader"]), 403, "FORBIDDEN")
    for device in ("device-a", "device-b"):
        assert_refused(await call(server, "POST", restore, tokens[device]), 403, "FORBIDDEN")
        refused = await call(server, "GET", f"/api/configs/{MAC}/history", tokens[device])
        assert_refused(refused, 403, "FORBIDDEN")
    restored = await call(server, "POST", restore, tokens["writer"])
    assert restored.status_code == 200
    assert restored.json()["device_name"] == "first"
    audit = [line for line in server.stderr().splitlines() if f"audit: POST {mac} 200" in line]
    assert len(audit) == 1
    assert "by sub:writer " in audit[0]


async def test_the_history_records_who_wrote_each_version_and_from_which_claim(
    server: Server, tokens: dict[str, str]
) -> None:
    mac = "12-34-56-78-9a-be"
    path = f"/api/configs/{mac}"
    for name, writer in (("first", "writer"), ("second", "operator")):
        body = {"content": {"deviceName": name}}
        assert (await call(server, "PUT", path, tokens[writer], json=body)).is_success
    assert (await call(server, "DELETE", path, tokens["writer"])).status_code == 204
    deleted = await call(server, "GET", "/api/configs/deleted", tokens["reader"])
    gone = [item for item in deleted.json()["configs"] if item["mac_address"] == mac]
    assert [(item["change"], item["subject"]) for item in gone] == [("deleted", "sub:writer")]
    history = (await call(server, "GET", f"{path}/history", tokens["reader"])).json()
    oldest = history["versions"][-1]["version"]
    restored = await call(server, "POST", f"{path}/history/{oldest}/restore", tokens["operator"])
    assert restored.status_code == 200
    history = (await call(server, "GET", f"{path}/history", tokens["reader"])).json()
    assert [(v["change"], v["device_name"], v["subject"]) for v in history["versions"]] == [
        ("created", "first", "sub:operator"),  # the restore, by whoever restored
        ("deleted", "second", "sub:writer"),  # the document the DELETE removed, by who deleted
        ("updated", "second", "sub:operator"),
        ("created", "first", "sub:writer"),
    ]
    # The audit line names the same subject first: a version and its line can be matched.
    audit = [line for line in server.stderr().splitlines() if f"audit: POST {mac} 200" in line]
    assert " by sub:operator client_id:operator " in audit[0]


async def test_search_needs_the_read_role_and_a_token_comes_before_the_filter(
    server: Server, tokens: dict[str, str]
) -> None:
    query = {"filter": f'eq(mac_address,"{MAC}")', "fields": "deviceName"}
    found = await call(server, "GET", "/api/configs", tokens["reader"], params=query)
    assert found.status_code == 200
    assert [entry["fields"] for entry in found.json()["configs"]] == [{"deviceName": "a"}]
    for client in ("device-a", "norole"):
        refused = await call(server, "GET", "/api/configs", tokens[client], params=query)
        assert_refused(refused, 403, "FORBIDDEN")
    malformed = await call(server, "GET", "/api/configs", params={"filter": "eq("})
    assert_refused(malformed, 401, "UNAUTHORIZED")


async def test_device_models_are_read_with_the_read_role_and_written_with_the_write_role(
    server: Server, tokens: dict[str, str]
) -> None:
    model = "/api/models/auth_model"
    body = {"name": "Auth model", "configSchema": {"type": "object"}}
    assert_refused(await call(server, "GET", "/api/models"), 401, "UNAUTHORIZED")
    assert_refused(await call(server, "PUT", model, tokens["reader"], json=body), 403, "FORBIDDEN")
    assert (await call(server, "PUT", model, tokens["writer"], json=body)).status_code == 200
    for path in ("/api/models", model, f"{model}/violations"):
        assert (await call(server, "GET", path, tokens["reader"])).status_code == 200, path
        assert_refused(await call(server, "GET", path), 401, "UNAUTHORIZED")
        for refused in ("norole", "device-a"):  # device tokens read no model
            assert_refused(await call(server, "GET", path, tokens[refused]), 403, "FORBIDDEN")
    for who in ("reader", "device-a"):
        delete = await call(server, "DELETE", model, tokens[who])
        assert_refused(delete, 403, "FORBIDDEN")
    assert (await call(server, "DELETE", model, tokens["writer"])).status_code == 204
    lines = server.stderr().splitlines()
    audit = [line for line in lines if "audit: " in line and "/api/models/auth_model" in line]
    assert [line.split("audit: ")[-1].split(" by ")[0] for line in audit] == [
        "PUT /api/models/auth_model 403 forbidden",
        "PUT /api/models/auth_model 200 allowed",
        "DELETE /api/models/auth_model 403 forbidden",
        "DELETE /api/models/auth_model 403 forbidden",
        "DELETE /api/models/auth_model 204 allowed",
    ]
    assert "by sub:writer " in audit[1]


async def test_a_patch_needs_the_write_role_and_is_audited_as_a_patch(
    server: Server, tokens: dict[str, str]
) -> None:
    mac = "12-34-56-78-9a-bf"
    put = await call(server, "PUT", f"/api/configs/{mac}", tokens["writer"],
                     json={"content": {"deviceName": "a"}})  # fmt: skip
    merge = {"Content-Type": "application/merge-patch+json"}
    for who in ("reader", "device-a"):
        refused = await call(server, "PATCH", f"/api/configs/{mac}", tokens[who],
                             content=b'{"deviceName": "b"}', headers=merge)  # fmt: skip
        assert_refused(refused, 403, "FORBIDDEN")
    patched = await call(server, "PATCH", f"/api/configs/{mac}", tokens["writer"],
                         content=b'{"deviceName": "b"}', headers=merge)  # fmt: skip
    assert patched.status_code == 200
    assert patched.json()["device_name"] == "b"
    audit = [line for line in server.stderr().splitlines() if f"audit: PATCH {mac}" in line]
    assert len(audit) == 3
    assert "403 forbidden by sub:reader" in audit[0]
    before, after = put.headers["ETag"], patched.headers["ETag"]
    assert "200 allowed by sub:writer " in audit[2]
    assert f"etag before {before}, after {after}" in audit[2]


async def test_a_token_without_a_role_is_forbidden(server: Server, tokens: dict[str, str]) -> None:
    response = await call(server, "GET", "/api/configs", tokens["norole"])
    body = assert_refused(response, 403, "FORBIDDEN")
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert "not allow" in body["error"]


async def test_no_token_is_401_with_a_challenge_a_browser_can_read(server: Server) -> None:
    for headers in ({}, {"Authorization": "Basic d3JpdGVyOnNlY3JldA=="}):
        response = await call(server, "GET", "/api/configs", headers={"Origin": ORIGIN, **headers})
        assert_refused(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="quart_iot"'
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]


async def test_two_authorization_headers_are_400_invalid_request(
    server: Server, tokens: dict[str, str]
) -> None:
    bearer = f"Bearer {tokens['reader']}"
    for second in (bearer, "Basic d3JpdGVyOnNlY3JldA==", "Bearer other"):
        async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
            response = await http.get(
                "/api/configs", headers=[("Authorization", bearer), ("Authorization", second)]
            )
        body = assert_refused(response, 400, "INVALID_REQUEST")
        challenge = response.headers["WWW-Authenticate"]
        assert 'error="invalid_request"' in challenge
        assert body["error"] in challenge
    text = await metrics(server)
    assert metric(text, "iot_auth_decisions_total", result="invalid_request") >= 3


async def test_preflight_allows_the_authorization_header_without_a_token(server: Server) -> None:
    response = await call(
        server,
        "OPTIONS",
        f"/api/configs/{MAC}",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()


def _claims(provider: Provider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": provider.issuer,
        "aud": AUDIENCE,
        "sub": "forger",
        "client_id": "forger",
        "iat": now,
        "exp": now + 300,
        "realm_access": {"roles": ["iot-config-writer"]},
    }
    return {**claims, **changes}


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    parts = [json.dumps(header).encode(), json.dumps(claims).encode()]
    return ".".join([*(b64(part) for part in parts), b64(signature)])


def _hmac_with_public_key(key: SigningKey, provider: Provider) -> str:
    import hashlib
    import hmac

    header = {"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}
    signing_input = _unsigned(header, _claims(provider))[:-1]
    mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def _tampered(provider: Provider) -> str:
    header, _, signature = provider.token("reader").split(".")
    claims = {**_claims(provider), "sub": "reader"}  # the reader makes itself a writer
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def _header(key: SigningKey, provider: Provider, **header: Any) -> str:
    """A token signed with the issuer's key, whose header has these fields (a null drops)."""
    fields = {"alg": "RS256", "kid": key.kid, "typ": "at+jwt", **header}
    return key.sign_raw({k: v for k, v in fields.items() if v is not ...}, _claims(provider))


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


FORGED_LINE = "2026-01-01 00:00:00,000 INFO [-] quart_iot.audit: audit: DELETE forged"
Forge = Callable[[SigningKey, Provider], str]
# Each bad token, and the refusal it gets (the 401's error, also in WWW-Authenticate).
FORGED: dict[str, tuple[Forge, str]] = {
    "expired": (lambda k, p: k.sign(_claims(p, exp=int(time.time()) - 3600)), "has expired"),
    "not yet valid": (lambda k, p: k.sign(_claims(p, nbf=int(time.time()) + 3600)), "not valid"),
    "issued in the future": (
        lambda k, p: k.sign(_claims(p, iat=int(time.time()) + 3600)),
        "not valid yet",
    ),
    "wrong issuer": (
        lambda k, p: k.sign(_claims(p, iss="http://127.0.0.1:1/evil")),
        "another issuer",
    ),
    "wrong audience": (
        lambda k, p: k.sign(_claims(p, aud="urn:another-service")),
        "another audience",
    ),
    "no expiry": (
        lambda k, p: k.sign({c: v for c, v in _claims(p).items() if c != "exp"}),
        "lacks a required claim",
    ),
    "no subject": (
        lambda k, p: k.sign({c: v for c, v in _claims(p).items() if c not in ("sub", "client_id")}),
        "names no subject",
    ),
    "tampered claims": (lambda k, p: _tampered(p), "signature is invalid"),
    "alg none": (
        lambda k, p: _unsigned({"alg": "none", "kid": k.kid, "typ": "at+jwt"}, _claims(p)),
        "algorithm is not accepted",
    ),
    "hmac signed with the public key": (_hmac_with_public_key, "algorithm is not accepted"),
    "unknown key": (lambda k, p: SigningKey("stranger").sign(_claims(p)), "unknown key"),
    "not a jwt": (lambda k, p: "not-a-token", "not a well-formed JWT"),
    "a token of 20,000 characters": (lambda k, p: "a" * 20_000, "not a well-formed JWT"),
    # Item 1: a header of any shape is a 401, never PyJWT's exception (a 500).
    "kid null": (lambda k, p: _header(k, p, kid=None), "not a well-formed JWT"),
    "kid 1": (lambda k, p: _header(k, p, kid=1), "not a well-formed JWT"),
    'kid ["k1"]': (lambda k, p: _header(k, p, kid=[k.kid]), "not a well-formed JWT"),
    "kid an object": (lambda k, p: _header(k, p, kid={"k": 1}), "not a well-formed JWT"),
    "crit [exp]": (lambda k, p: _header(k, p, crit=["exp"]), "critical header"),
    "crit [b64]": (lambda k, p: _header(k, p, crit=["b64"]), "critical header"),
    "crit []": (lambda k, p: _header(k, p, crit=[]), "critical header"),
    "crit a string": (lambda k, p: _header(k, p, crit="exp"), "critical header"),
    "crit null": (lambda k, p: _header(k, p, crit=None), "critical header"),
    "crit with a forged log line": (
        lambda k, p: _header(k, p, crit=[f"x\n{FORGED_LINE}\r\n"]),
        "critical header",
    ),
    "b64 false without crit": (lambda k, p: _header(k, p, b64=False), "not a well-formed JWT"),
    "alg null": (lambda k, p: _header(k, p, alg=None), "algorithm is not accepted"),
    "alg a list": (lambda k, p: _header(k, p, alg=["RS256"]), "algorithm is not accepted"),
    "no alg": (lambda k, p: _header(k, p, alg=...), "algorithm is not accepted"),
    "typ a number": (lambda k, p: _header(k, p, typ=5), "not a well-formed JWT"),
    "header a list": (lambda k, p: k.sign_raw(["RS256"], _claims(p)), "not a well-formed JWT"),
    "header not JSON": (lambda k, p: k.sign_raw(b"{alg", _claims(p)), "not a well-formed JWT"),
    "header nested 1500 deep": (
        lambda k, p: k.sign_raw(_nested(1500), _claims(p)),
        "not a well-formed JWT",
    ),
    # Item 6: token shapes. An ID token (or any JWT not typed at+jwt) is not an access token.
    "typ JWT (an ID token's)": (lambda k, p: k.sign(_claims(p), typ="JWT"), "not a JWT access"),
    "no typ": (lambda k, p: _header(k, p, typ=...), "not a JWT access token"),
    "at+jwt with a nonce": (lambda k, p: k.sign(_claims(p, nonce="n-0S6_WzA2Mj")), "an ID token"),
    "at+jwt with an at_hash": (lambda k, p: k.sign(_claims(p, at_hash="77QmUPtjPfzWtF2A")), "ID"),
    # exp, nbf, iat: JSON numbers of seconds, nothing PyJWT would coerce or choke on.
    "exp a numeric string": (
        lambda k, p: k.sign(_claims(p, exp=str(int(time.time()) + 300))),
        "exp is not a number",
    ),
    "exp true": (lambda k, p: k.sign(_claims(p, exp=True)), "exp is not a number"),
    "exp null": (lambda k, p: k.sign(_claims(p, exp=None)), "lacks a required claim"),
    "exp Infinity": (
        lambda k, p: k.sign_raw(
            {"alg": "RS256", "kid": k.kid, "typ": "at+jwt"},
            json.dumps(_claims(p, exp=float("inf"))).encode(),
        ),
        "exp is not a number",
    ),
    "exp 1e400": (
        lambda k, p: k.sign_raw(
            {"alg": "RS256", "kid": k.kid, "typ": "at+jwt"},
            json.dumps(_claims(p, exp=0)).replace('"exp": 0', '"exp": 1e400').encode(),
        ),
        "exp is not a number",
    ),
    "exp 10**30": (lambda k, p: k.sign(_claims(p, exp=10**30)), "exp is not a number"),
    "nbf a string": (lambda k, p: k.sign(_claims(p, nbf="yesterday")), "nbf is not a number"),
    "iat a numeric string": (lambda k, p: k.sign(_claims(p, iat="1")), "iat is not a number"),
    "payload nested 1500 deep": (
        lambda k, p: k.sign_raw({"alg": "RS256", "kid": k.kid, "typ": "at+jwt"}, _nested(1500)),
        "not a well-formed JWT",
    ),
    "payload a list": (
        lambda k, p: k.sign_raw({"alg": "RS256", "kid": k.kid, "typ": "at+jwt"}, [1]),
        "not a well-formed JWT",
    ),
}


@pytest.mark.parametrize("case", FORGED)
async def test_a_bad_token_is_401_invalid_token(
    server: Server, key: SigningKey, provider: Provider, case: str
) -> None:
    forge, refusal = FORGED[case]
    token = await asyncio.to_thread(forge, key, provider)
    for method, path in [("GET", "/api/configs"), ("DELETE", f"/api/configs/{MAC}")]:
        response = await call(server, method, path, token)
        body = assert_refused(response, 401, "UNAUTHORIZED")
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert token not in response.text
        assert refusal in body["error"]
        assert f'error_description="{body["error"]}"' in response.headers["WWW-Authenticate"]
    # Never a 500, and no line of the log is one a client wrote (item 1).
    logged = server.stderr()
    assert not [line for line in logged.splitlines() if line.startswith(FORGED_LINE[:10])]
    assert "Traceback" not in logged
    assert metric(await metrics(server), "http_requests_total", status="500") == 0


async def test_a_numeric_string_exp_is_refused_every_time_not_500_once_cached(
    server: Server, key: SigningKey, provider: Provider
) -> None:
    token = key.sign(_claims(provider, exp=str(int(time.time()) + 300)))
    for _ in range(3):  # main: 200, then 500 on every cached hit
        assert_refused(await call(server, "GET", "/api/configs", token), 401, "UNAUTHORIZED")


async def test_probes_metrics_and_docs_stay_open(server: Server) -> None:
    for path in ("/api/health", "/api/health/live", "/metrics", "/api/docs"):
        assert (await call(server, "GET", path)).status_code == 200, path
    document = (await call(server, "GET", "/api/docs/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            protected = path.startswith(("/api/configs", "/api/models"))
            assert ("security" in operation) == protected, (method, path)
            if protected:
                assert operation["security"] == [{"bearerAuth": []}]
                assert {"401", "403"} <= set(operation["responses"])
    assert "post" in document["paths"]["/api/configs/events/tickets"]
    events = document["paths"]["/api/configs/events"]["get"]
    assert "ticket" in [parameter["name"] for parameter in events["parameters"]]


def test_quart_schema_has_what_the_bearer_docs_use() -> None:
    """quart_iot/oidc/openapi.py swaps quart-schema's OpenAPI provider: this fails loudly when
    quart-schema changes what that relies on (then see that module's docstring)."""
    import inspect

    from quart_schema import QuartSchema
    from quart_schema.openapi import OpenAPIProvider

    from quart_iot.oidc.openapi import EXTENSION_KEY

    app = Quart(__name__)
    schema = QuartSchema()
    schema.init_app(app)
    assert app.extensions.get(EXTENSION_KEY) is schema, "quart-schema's extension key moved"
    assert isinstance(schema.openapi_provider, OpenAPIProvider), "no openapi_provider attribute"
    assert list(inspect.signature(OpenAPIProvider.__init__).parameters) == [
        "self",
        "app",
        "extension",
    ], "OpenAPIProvider(app, extension) changed"
    assert list(inspect.signature(OpenAPIProvider.build_paths).parameters) == ["self", "rule"]
    assert hasattr(schema, "security_schemes"), "QuartSchema.security_schemes is gone"

    @app.get("/x")
    async def x() -> str:
        """X."""
        return ""

    rule = next(rule for rule in app.url_map.iter_rules() if rule.rule == "/x")
    paths, _ = schema.openapi_provider.build_paths(rule)
    assert set(paths["/x"]["get"]) >= {"parameters", "responses"}, "operation shape changed"


async def test_decisions_are_counted_and_tokens_never_logged(
    server: Server, tokens: dict[str, str]
) -> None:
    await call(server, "GET", "/api/configs", tokens["reader"])
    await call(server, "GET", "/api/configs")
    text = await metrics(server)
    assert metric(text, "iot_auth_decisions_total", result="allowed", reason="reader") >= 1
    assert metric(text, "iot_auth_decisions_total", result="unauthorized", reason="missing") >= 1
    for secret in (MAC, "device-a", "sub:", *tokens.values()):
        assert secret not in text
    logged = server.stderr()
    assert "audit:" in logged
    for token in tokens.values():
        for part in token.split("."):
            assert part not in logged


async def test_roles_from_a_space_separated_scope(
    make_settings: Callable[..., Settings], provider: Provider
) -> None:
    settings = make_settings(
        oidc_issuer=provider.issuer, oidc_audience=AUDIENCE, oidc_roles_claim="scope"
    )
    app = create_app(settings)
    token = await asyncio.to_thread(provider.token, "scoped", scope="iot-config-reader")
    headers = {"Authorization": f"Bearer {token}"}
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/api/configs", headers=headers)).status_code == 200
        put = await client.put(f"/api/configs/{MAC}", json={"content": {}}, headers=headers)
        assert put.status_code == 403


async def test_the_request_s_identity_subject_and_token_expiry(
    configs_dir: Path, provider: Provider
) -> None:
    """For the event stream's deadline and the per-subject bounds of waiting."""
    app = create_app(oidc_settings(provider.issuer, configs_dir))
    token = await asyncio.to_thread(provider.token, "reader")
    exp = json.loads(_payload(token))["exp"]
    async with app.test_app():
        headers = {"Authorization": f"Bearer {token}"}
        async with app.test_request_context("/api/configs", headers=headers):
            await app.preprocess_request()
            identity = current_identity()
            assert identity is not None
            assert (identity.subject, identity.right, identity.expires_at) == (
                "sub:reader",
                "reader",
                exp,
            )
            assert token_expiry() == exp
            assert request_subject() == "sub:reader"
            assert 0 < identity.seconds_left() <= 600
        async with app.test_request_context("/api/health/live", headers=headers):
            await app.preprocess_request()  # an open route: nobody is asked who they are
            assert (current_identity(), token_expiry(), request_subject()) == (None, None, None)
    open_app = create_app(Settings(esp32_configs_dir=configs_dir, _env_file=None))
    async with open_app.test_app(), open_app.test_request_context("/api/configs"):
        await open_app.preprocess_request()
        assert (current_identity(), token_expiry(), request_subject()) == (None, None, None)


def _payload(token: str) -> bytes:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


async def test_plain_jwt_access_tokens_only_when_allowed_and_never_an_id_token(
    configs_dir: Path, key: SigningKey, provider: Provider
) -> None:
    plain = key.sign(_claims(provider), typ="JWT")  # Keycloak's, Entra ID's, Authentik's...
    untyped = _header(key, provider, typ=...)  # Okta's
    id_tokens = [
        key.sign(_claims(provider, nonce="abc"), typ="JWT"),
        key.sign(_claims(provider, at_hash="77QmUPtjPfzWtF2A"), typ="JWT"),
        key.sign(_claims(provider, typ="ID"), typ="JWT"),  # Keycloak's ID tokens say so
    ]
    for allow, accepted in ((False, ()), (True, (plain, untyped))):
        app = create_app(oidc_settings(provider.issuer, configs_dir, oidc_allow_plain_jwt=allow))
        async with app.test_app():
            for token in (plain, untyped, *id_tokens):
                response = await app.test_client().get(
                    "/api/configs", headers={"Authorization": f"Bearer {token}"}
                )
                assert response.status_code == (200 if token in accepted else 401), allow


@pytest.mark.parametrize("plain_jwt", [False, True])
async def test_an_id_token_from_a_real_login_is_not_an_access_token(
    make_settings: Callable[..., Settings], provider: Provider, plain_jwt: bool
) -> None:
    """A person logs in (authorization code): the app gets an ID token beside its access
    token. With an audience equal to the client id (the old Authentik recipe), main accepted
    that ID token as an access token, and its roles let it write."""
    settings = make_settings(
        oidc_issuer=provider.issuer, oidc_audience="spa", oidc_allow_plain_jwt=plain_jwt
    )
    app = create_app(settings)
    for nonce in ("n-0S6_WzA2Mj", None):
        id_token = (await asyncio.to_thread(provider.login, "spa", nonce))["id_token"]
        async with app.test_app():
            response = await app.test_client().put(
                f"/api/configs/{MAC}",
                json={"content": {"deviceName": "by an ID token"}},
                headers={"Authorization": f"Bearer {id_token}"},
            )
        assert response.status_code == 401
        error = (await response.get_json())["error"]
        assert error == (
            "The token is an ID token, not an access token"
            if plain_jwt
            else "The token is not a JWT access token (at+jwt)"
        )
    async with app.test_app():  # nothing was written
        with pytest.raises(ConfigNotFound):
            await ConfigStore.of(app).get(MAC)


async def test_unknown_keys_refresh_at_most_once_per_interval(provider: Provider) -> None:
    settings = oidc_settings(provider.issuer, Path("/nonexistent"), oidc_jwks_min_refresh=3600)
    fetches: list[str] = []
    keys = KeySet(settings, fetches.append)
    kid = unverified_kid(await asyncio.to_thread(provider.token, "reader"))
    await keys.key(kid)
    for _ in range(3):
        with pytest.raises(InvalidToken) as refused:
            await keys.key("never-published")
        assert refused.value.reason == "unknown_key"
    assert fetches == ["ok"]


async def test_the_tls_context_is_built_once_and_off_the_event_loop(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building it reads the CA bundle (about 40 ms of CPU): not in the loop's thread, and not
    again for each fetch of the keys."""
    built_in: list[threading.Thread] = []
    build = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built_in.append(threading.current_thread())
        return build(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    fetches: list[str] = []
    keys = KeySet(oidc_settings(provider.issuer, Path("/nonexistent")), fetches.append)
    for _ in range(3):
        keys.keys = Keys({}, frozenset(), -float("inf"))  # as if they were old
        keys._last_attempt = -float("inf")  # and the rate limit long past
        await keys.current()
    assert fetches == ["ok", "ok", "ok"]
    assert len(built_in) == 1
    assert built_in[0] is not threading.current_thread()


async def test_an_issuer_that_never_answers_is_a_401_not_a_hang(configs_dir: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
        app = create_app(oidc_settings(issuer, configs_dir, oidc_http_timeout=0.5))
        now = int(time.time())
        claims = {"iss": issuer, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60}
        token = SigningKey("k").sign(claims)
        async with app.test_app():
            response = await app.test_client().get(
                "/api/configs", headers={"Authorization": f"Bearer {token}"}
            )
    assert response.status_code == 401
    assert (await response.get_json())["code"] == "UNAUTHORIZED"


DISCOVERY = "/.well-known/openid-configuration"
# Issuers that answer, wrongly: each is a 401 with WWW-Authenticate and one warning.
BROKEN_ISSUERS: dict[str, tuple[dict[str, Any], str]] = {
    "a jwks_uri on another scheme than the issuer's": (
        {DISCOVERY: {"issuer": "{url}", "jwks_uri": "https://127.0.0.1/jwks"}},
        "not on the issuer's scheme",
    ),
    "a jwks_uri with a bad port": (
        {DISCOVERY: {"issuer": "{url}", "jwks_uri": "http://127.0.0.1:99999/jwks"}},
        "bad port",
    ),
    "a jwks_uri that is not a string": (
        {DISCOVERY: {"issuer": "{url}", "jwks_uri": ["{url}/jwks"]}},
        "no jwks_uri",
    ),
    "a discovery document nested 100,000 deep": (
        {DISCOVERY: b"[" * 100_000 + b"]" * 100_000},
        "RecursionError",
    ),
    "a discovery document of 2 MiB": ({DISCOVERY: b" " * 2**21 + b"{}"}, "larger than"),
    "a discovery document that is not JSON": ({DISCOVERY: b"<html>"}, "JSONDecodeError"),
    "a discovery document naming another issuer": (
        {DISCOVERY: {"issuer": "https://elsewhere", "jwks_uri": "{url}/jwks"}},
        "another issuer",
    ),
    "keys that are not a list": (
        {
            DISCOVERY: {"issuer": "{url}", "jwks_uri": "{url}/jwks"},
            "/jwks": {"keys": {"k": {}}},
        },
        "no list of keys",
    ),
    "a 500": ({}, "HTTPStatusError"),
}


@pytest.mark.parametrize("case", BROKEN_ISSUERS)
async def test_every_issuer_failure_is_a_401_and_one_warning(
    configs_dir: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    routes, warning = BROKEN_ISSUERS[case]
    with StaticIssuer() as issuer:
        for path, body in routes.items():
            issuer.serve(path, body)
        if not routes:
            issuer.serve(DISCOVERY, b"oops", status=500)
        app = create_app(oidc_settings(issuer.url, configs_dir))
        now = int(time.time())
        claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60}
        headers = {"Authorization": f"Bearer {SigningKey('k').sign(claims)}"}
        async with app.test_app():
            for _ in range(2):  # the second within OIDC_JWKS_MIN_REFRESH: no second fetch
                response = await app.test_client().get("/api/configs", headers=headers)
                assert response.status_code == 401
                assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelname for r in records] == ["WARNING"], [r.getMessage() for r in records]
    assert "could not refresh the OIDC signing keys" in records[0].getMessage()
    assert warning in records[0].getMessage()


@pytest.mark.parametrize(
    ("issuer", "allowed", "starts"),
    [
        ("http://keycloak.example/realms/iot", False, False),
        ("http://keycloak.example/realms/iot", True, True),
        ("http://127.0.0.1:8080/realms/iot", False, True),
        ("http://[::1]:8080/realms/iot", False, True),
        ("http://localhost:8080/realms/iot", False, True),
        ("https://keycloak.example/realms/iot", False, True),
    ],
)
def test_an_http_issuer_beyond_loopback_needs_an_explicit_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, issuer: str, allowed: bool, starts: bool
) -> None:
    def make() -> Settings:
        return oidc_settings(issuer, tmp_path, oidc_allow_http_issuer=allowed)

    if starts:
        assert make().oidc_issuer == issuer
        with caplog.at_level(logging.WARNING, logger="quart_iot.oidc"):
            create_app(make())
        warned = [
            r.getMessage() for r in caplog.records if "OIDC_ALLOW_HTTP_ISSUER" in r.getMessage()
        ]
        assert len(warned) == allowed  # one warning when plain http is allowed, else none
    else:
        with pytest.raises(ValueError, match="OIDC_ALLOW_HTTP_ISSUER"):
            make()


@pytest.mark.parametrize(
    ("min_refresh", "max_age", "valid"), [(4.9, 3600, False), (5, 5, True), (30, 29, False)]
)
def test_the_key_refresh_intervals_have_a_floor_and_an_order(
    tmp_path: Path, min_refresh: float, max_age: float, valid: bool
) -> None:
    def make() -> Settings:
        return oidc_settings(
            "https://kc.example",
            tmp_path,
            oidc_jwks_min_refresh=min_refresh,
            oidc_jwks_max_age=max_age,
        )

    if valid:
        assert make().oidc_jwks_max_age == max_age
    else:
        with pytest.raises(ValueError, match="oidc_jwks"):
            make()


async def test_off_by_default_warns_when_listening_beyond_loopback(
    configs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="quart_iot.oidc"):
        create_app(Settings(esp32_configs_dir=configs_dir, _env_file=None))
        assert not caplog.records
        app = create_app(Settings(esp32_configs_dir=configs_dir, host="0.0.0.0", _env_file=None))
    assert [r.getMessage() for r in caplog.records if "access control is off" in r.getMessage()]
    assert len(caplog.records) == 1
    async with app.test_app():
        assert (await app.test_client().get("/api/configs")).status_code == 200
        # No stream tickets: the stream needs none (the path is refused as any unknown one).
        tickets = await app.test_client().post("/api/configs/events/tickets")
        assert tickets.status_code in (400, 404)
        document = await (await app.test_client().get("/api/docs/openapi.json")).get_json()
    assert "securitySchemes" not in document["components"]


def test_pyjwt_cryptography_and_httpx_are_imported_only_with_access_control_on(
    tmp_path: Path,
) -> None:
    script = (
        "import sys\n"
        "from quart_iot.app import create_app\n"
        "from quart_iot.settings import Settings\n"
        f"create_app(Settings(esp32_configs_dir={str(tmp_path)!r}, _env_file=None))\n"
        "print(sorted({'jwt', 'cryptography', 'httpx'} & set(sys.modules)))\n"
        f"create_app(Settings(esp32_configs_dir={str(tmp_path)!r}, _env_file=None,\n"
        "    oidc_issuer='https://kc.example', oidc_audience='a'))\n"
        "print(sorted({'jwt', 'cryptography', 'httpx'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines() == ["[]", "['cryptography', 'httpx', 'jwt']"]


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[tuple[Provider, Server, list[SigningKey]]]:
    install()
    keys = [SigningKey("old"), SigningKey("new")]
    provider = Provider([keys[0]])
    provider.start()
    try:
        with running_server(tmp_path, **oidc_env(provider)) as server:
            yield provider, server, keys
    finally:
        provider.close()


async def wait_past_max_age(since: float) -> None:
    """Until OIDC_JWKS_MAX_AGE has passed since `since` (a time.monotonic())."""
    await asyncio.sleep(max(0.0, since + MAX_AGE - time.monotonic()) + 0.1)


async def test_key_rotation_a_withdrawn_key_and_the_provider_down(
    rotating: tuple[Provider, Server, list[SigningKey]],
) -> None:
    provider, server, (old, new) = rotating
    before = await asyncio.to_thread(provider.token, "reader")
    assert (await call(server, "GET", "/api/configs", before)).status_code == 200
    fetched = time.monotonic()  # the keys were fetched before this
    # The provider rotates: it signs with a new key, and still publishes the old one.
    await asyncio.to_thread(provider.restart, [new, old])
    after = await asyncio.to_thread(provider.token, "reader")
    assert unverified_kid(after) == "new"
    await wait_past_max_age(fetched)  # OIDC_JWKS_MIN_REFRESH: the floor, 5 s
    assert (await call(server, "GET", "/api/configs", after)).status_code == 200
    fetched = time.monotonic()
    assert (await call(server, "GET", "/api/configs", before)).status_code == 200
    assert metric(await metrics(server), "iot_auth_jwks_fetches_total", outcome="ok") == 2
    # Item 5: the provider withdraws the old key. The token signed with it was verified and
    # is remembered; it stops working within OIDC_JWKS_MAX_AGE all the same.
    await asyncio.to_thread(provider.restart, [new])
    await wait_past_max_age(fetched)
    refused = await call(server, "GET", "/api/configs", before)
    assert "unknown key" in assert_refused(refused, 401, "UNAUTHORIZED")["error"]
    assert (await call(server, "GET", "/api/configs", after)).status_code == 200
    assert metric(await metrics(server), "iot_auth_jwks_fetches_total", outcome="ok") == 3
    # The provider stops: the keys we hold keep working; an unknown one is a 401, not a 500.
    await asyncio.to_thread(provider.stop)
    assert (await call(server, "GET", "/api/configs", after)).status_code == 200
    stranger = SigningKey("stranger").sign(_claims(provider))
    assert_refused(await call(server, "GET", "/api/configs", stranger), 401, "UNAUTHORIZED")


async def test_events_need_the_read_role_and_a_device_long_polls_its_own_document(
    server: Server, tokens: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {tokens['reader']}"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http,
        http.stream("GET", "/api/configs/events", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        assert await anext(stream.aiter_lines()) == ": connected"
    for token in (None, tokens["norole"], tokens["device-a"]):
        refused = await call(server, "GET", "/api/configs/events", token)
        assert refused.status_code == (401 if token is None else 403)
    device = tokens["device-a"]
    etag = (await call(server, "GET", f"/api/configs/{MAC}.json", device)).headers["ETag"]
    waited = await call(
        server,
        "GET",
        f"/api/configs/{MAC}.json",
        device,
        headers={"If-None-Match": etag, "Prefer": "wait=1"},
    )
    assert waited.status_code == 304
    assert waited.headers["Preference-Applied"] == "wait=1"
    other = await call(
        server,
        "GET",
        f"/api/configs/{OTHER_MAC}.json",
        device,
        headers={"If-None-Match": etag, "Prefer": "wait=1"},
    )
    assert_refused(other, 403, "FORBIDDEN")
