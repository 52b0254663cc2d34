from collections.abc import Awaitable, Callable

from quart import Quart

from tests.conftest import Client

ORIGIN = "http://localhost:3000"
Serving = Callable[..., Awaitable[Quart]]


async def test_allowed_origin_gets_cors_headers(serving: Serving) -> None:
    client = (await serving(cors_origins=[ORIGIN])).test_client()
    response = await client.get("/api/configs", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


async def test_preflight_for_put_is_answered(serving: Serving) -> None:
    client = (await serving(cors_origins=[ORIGIN])).test_client()
    response = await client.options(
        "/api/configs/aa-bb-cc-dd-ee-ff",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "Content-Type, If-Match",
        },
    )
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PUT" in response.headers["Access-Control-Allow-Methods"]


async def test_no_origin_is_allowed_by_default(client: Client) -> None:
    response = await client.get("/api/configs", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
