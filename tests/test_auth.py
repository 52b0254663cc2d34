import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from quart_iot.app import create_app
from quart_iot.auth import InvalidToken
from quart_iot.settings import Settings
from quart_iot.tokens import KeySet
from tests.conftest import MAC, OTHER_MAC, write_config
from tests.oidc_provider import AUDIENCE, Provider, SigningKey, b64, install, unverified_kid
from tests.server import Server, running_server

ORIGIN = "http://localhost:3000"
NEW_MAC = "12-34-56-78-9a-bc"
ERROR_KEYS = {"error", "code", "details", "correlationId"}


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
        "OIDC_JWKS_MIN_REFRESH": "0",
        "LOG_LEVEL": "INFO",
        "CORS_ORIGINS": json.dumps([ORIGIN]),
        **extra,
    }


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
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
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
    assert "sub=writer client_id=writer preferred_username=admin" in created
    assert f"etag before none, after {etag}" in created
    assert "403 forbidden by sub=reader" in refusal
    assert "204 allowed by sub=writer client_id=writer preferred_username=admin" in deleted
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
    assert "sub=writer" in audit[0]


async def test_the_history_records_who_wrote_each_version(
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
    assert [(item["change"], item["subject"]) for item in gone] == [("deleted", "writer")]
    history = (await call(server, "GET", f"{path}/history", tokens["reader"])).json()
    oldest = history["versions"][-1]["version"]
    restored = await call(server, "POST", f"{path}/history/{oldest}/restore", tokens["operator"])
    assert restored.status_code == 200
    history = (await call(server, "GET", f"{path}/history", tokens["reader"])).json()
    assert [(v["change"], v["device_name"], v["subject"]) for v in history["versions"]] == [
        ("created", "first", "operator"),  # the restore, by whoever restored
        ("deleted", "second", "writer"),  # the document the DELETE removed, by who deleted
        ("updated", "second", "operator"),
        ("created", "first", "writer"),
    ]


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

    signing_input = _unsigned({"alg": "HS256", "kid": key.kid}, _claims(provider))[:-1]
    mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def _tampered(provider: Provider) -> str:
    header, _, signature = provider.token("reader").split(".")
    claims = {**_claims(provider), "sub": "reader"}  # the reader makes itself a writer
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


Forge = Callable[[SigningKey, Provider], str]
FORGED: dict[str, Forge] = {
    "expired": lambda k, p: k.sign(_claims(p, exp=int(time.time()) - 3600)),
    "not yet valid": lambda k, p: k.sign(_claims(p, nbf=int(time.time()) + 3600)),
    "wrong issuer": lambda k, p: k.sign(_claims(p, iss="http://127.0.0.1:1/evil")),
    "wrong audience": lambda k, p: k.sign(_claims(p, aud="urn:another-service")),
    "no expiry": lambda k, p: k.sign({c: v for c, v in _claims(p).items() if c != "exp"}),
    "tampered claims": lambda k, p: _tampered(p),
    "alg none": lambda k, p: _unsigned({"alg": "none", "kid": k.kid}, _claims(p)),
    "hmac signed with the public key": _hmac_with_public_key,
    "unknown key": lambda k, p: SigningKey("stranger").sign(_claims(p)),
    "not a jwt": lambda k, p: "not-a-token",
}


@pytest.mark.parametrize("case", FORGED)
async def test_a_bad_token_is_401_invalid_token(
    server: Server, key: SigningKey, provider: Provider, case: str
) -> None:
    token = FORGED[case](key, provider)
    for method, path in [("GET", "/api/configs"), ("DELETE", f"/api/configs/{MAC}")]:
        response = await call(server, method, path, token)
        body = assert_refused(response, 401, "UNAUTHORIZED")
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert token not in response.text
        assert body["error"] in response.headers["WWW-Authenticate"]


async def test_probes_metrics_and_docs_stay_open(server: Server) -> None:
    for path in ("/api/health", "/api/health/live", "/metrics", "/api/docs"):
        assert (await call(server, "GET", path)).status_code == 200, path
    document = (await call(server, "GET", "/api/docs/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            protected = path.startswith("/api/configs")
            assert ("security" in operation) == protected, (method, path)
            if protected:
                assert operation["security"] == [{"bearerAuth": []}]
                assert {"401", "403"} <= set(operation["responses"])


async def test_decisions_are_counted_and_tokens_never_logged(
    server: Server, tokens: dict[str, str]
) -> None:
    await call(server, "GET", "/api/configs", tokens["reader"])
    await call(server, "GET", "/api/configs")
    text = await metrics(server)
    assert metric(text, "iot_auth_decisions_total", result="allowed", reason="reader") >= 1
    assert metric(text, "iot_auth_decisions_total", result="unauthorized", reason="missing") >= 1
    for secret in (MAC, "device-a", "sub=", *tokens.values()):
        assert secret not in text
    logged = server.stderr()
    assert "audit:" in logged
    for token in tokens.values():
        for part in token.split("."):
            assert part not in logged


async def test_roles_from_a_space_separated_scope(configs_dir: Path, provider: Provider) -> None:
    settings = Settings(
        esp32_configs_dir=configs_dir,
        oidc_issuer=provider.issuer,
        oidc_audience=AUDIENCE,
        oidc_roles_claim="scope",
        _env_file=None,
    )
    app = create_app(settings)
    token = await asyncio.to_thread(provider.token, "scoped", scope="iot-config-reader")
    headers = {"Authorization": f"Bearer {token}"}
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/api/configs", headers=headers)).status_code == 200
        put = await client.put(f"/api/configs/{MAC}", json={"content": {}}, headers=headers)
        assert put.status_code == 403


async def test_unknown_keys_refresh_at_most_once_per_interval(provider: Provider) -> None:
    settings = Settings(
        esp32_configs_dir=Path("/nonexistent"),
        oidc_issuer=provider.issuer,
        oidc_audience=AUDIENCE,
        oidc_jwks_min_refresh=3600,
        _env_file=None,
    )
    fetches: list[str] = []
    keys = KeySet(settings, fetches.append)
    kid = unverified_kid(await asyncio.to_thread(provider.token, "reader"))
    await keys.key(kid)
    for _ in range(3):
        with pytest.raises(InvalidToken) as refused:
            await keys.key("never-published")
        assert refused.value.reason == "unknown_key"
    assert fetches == ["ok"]


async def test_an_issuer_that_never_answers_is_a_401_not_a_hang(configs_dir: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = Settings(
            esp32_configs_dir=configs_dir,
            oidc_issuer=issuer,
            oidc_audience=AUDIENCE,
            oidc_http_timeout=0.5,
            _env_file=None,
        )
        app = create_app(settings)
        now = int(time.time())
        claims = {"iss": issuer, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60}
        token = SigningKey("k").sign(claims)
        async with app.test_app():
            response = await app.test_client().get(
                "/api/configs", headers={"Authorization": f"Bearer {token}"}
            )
    assert response.status_code == 401
    assert (await response.get_json())["code"] == "UNAUTHORIZED"


async def test_off_by_default_warns_when_listening_beyond_loopback(
    configs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="quart_iot.auth"):
        create_app(Settings(esp32_configs_dir=configs_dir, _env_file=None))
        assert not caplog.records
        app = create_app(Settings(esp32_configs_dir=configs_dir, host="0.0.0.0", _env_file=None))
    assert [r.getMessage() for r in caplog.records if "access control is off" in r.getMessage()]
    assert len(caplog.records) == 1
    async with app.test_app():
        assert (await app.test_client().get("/api/configs")).status_code == 200
        document = await (await app.test_client().get("/api/docs/openapi.json")).get_json()
    assert "securitySchemes" not in document["components"]


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


async def test_key_rotation_then_the_provider_down(
    rotating: tuple[Provider, Server, list[SigningKey]],
) -> None:
    provider, server, (old, new) = rotating
    before = await asyncio.to_thread(provider.token, "reader")
    assert (await call(server, "GET", "/api/configs", before)).status_code == 200
    fetched = metric(await metrics(server), "iot_auth_jwks_fetches_total", outcome="ok")
    # The provider rotates: it signs with a new key, and still publishes the old one.
    await asyncio.to_thread(provider.restart, [new, old])
    after = await asyncio.to_thread(provider.token, "reader")
    assert unverified_kid(after) == "new"
    assert (await call(server, "GET", "/api/configs", after)).status_code == 200
    assert (await call(server, "GET", "/api/configs", before)).status_code == 200
    text = await metrics(server)
    assert metric(text, "iot_auth_jwks_fetches_total", outcome="ok") == fetched + 1
    # The provider stops: the keys we hold keep working; an unknown one is a 401, not a 500.
    await asyncio.to_thread(provider.stop)
    assert (await call(server, "GET", "/api/configs", after)).status_code == 200
    stranger = SigningKey("stranger").sign(_claims(provider))
    assert_refused(await call(server, "GET", "/api/configs", stranger), 401, "UNAUTHORIZED")
    assert metric(await metrics(server), "iot_auth_jwks_fetches_total", outcome="error") == 1
    assert re.search(r"could not refresh the OIDC signing keys", server.stderr())


async def test_events_need_the_read_role_and_a_device_long_polls_its_own_document(
    server: Server, tokens: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {tokens['reader']}"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
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
