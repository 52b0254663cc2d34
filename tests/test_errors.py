import logging

import pytest
from quart import Quart

from tests.conftest import MAC, Client
from tests.harness import ERROR_KEYS


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/nothing-here", 404, "ROUTE_NOT_FOUND"),
        ("GET", "/", 404, "ROUTE_NOT_FOUND"),
        ("POST", "/api/configs", 405, "METHOD_NOT_ALLOWED"),
        ("PATCH", "/api/configs", 405, "METHOD_NOT_ALLOWED"),
        ("PATCH", f"/api/configs/{MAC}", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("POST", "/api/models", 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", "/api/health", 405, "METHOD_NOT_ALLOWED"),
        ("GET", f"/api/configs/{MAC}", 404, "RECORD_NOT_FOUND"),
        ("GET", "/api/configs/nope", 400, "INVALID_OPERATION"),
    ],
)
async def test_every_error_has_the_contract_body(
    client: Client, method: str, path: str, status: int, code: str
) -> None:
    response = await getattr(client, method.lower())(path)
    assert response.status_code == status
    body = await response.get_json()
    assert set(body) == ERROR_KEYS
    assert body["status"] == status
    assert body["code"] == code
    assert body["error"]
    assert body["correlationId"] == response.headers["X-Request-ID"]


async def test_405_names_the_allowed_methods(client: Client) -> None:
    response = await client.post("/api/configs")
    assert "GET" in response.headers["Allow"]


async def test_request_id_is_echoed(client: Client) -> None:
    response = await client.get(f"/api/configs/{MAC}", headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
    assert (await response.get_json())["correlationId"] == "trace-42"


async def test_request_id_is_made_when_absent_or_insane(client: Client) -> None:
    first = await client.get("/api/health/live")
    bad = await client.get("/api/health/live", headers={"X-Request-ID": "a b\tc" + "x" * 300})
    ids = {first.headers["X-Request-ID"], bad.headers["X-Request-ID"]}
    assert len(ids) == 2
    assert all(len(i) == 32 for i in ids)


async def test_log_lines_carry_the_correlation_id(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await client.get(f"/api/configs/{MAC}", headers={"X-Request-ID": "corr-7"})
    records = [r for r in caplog.records if "RECORD_NOT_FOUND" in r.getMessage()]
    assert records
    assert all(getattr(r, "correlation_id", None) == "corr-7" for r in records)
    assert all(r.exc_info is None for r in records)  # 4xx: no stack trace


async def test_unexpected_exception_is_500_without_details(
    app: Quart, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/api/boom")
    async def boom() -> str:
        raise RuntimeError("secret /etc/path detail")

    response = await client.get("/api/boom")
    assert response.status_code == 500
    body = await response.get_json()
    assert body["code"] == "INTERNAL_ERROR"
    assert "secret" not in str(body)
    assert "/etc" not in str(body)
    assert any(r.exc_info for r in caplog.records)  # logged with its stack trace
