from pathlib import Path

from quart_iot.app import create_app
from quart_iot.settings import Settings

ORIGIN = "http://localhost:3000"


def make_settings(configs_dir: Path, origins: list[str]) -> Settings:
    return Settings(esp32_configs_dir=configs_dir, cors_origins=origins, _env_file=None)


async def test_allowed_origin_gets_cors_headers(configs_dir: Path) -> None:
    client = create_app(make_settings(configs_dir, [ORIGIN])).test_client()
    response = await client.get("/api/configs", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


async def test_preflight_for_put_is_answered(configs_dir: Path) -> None:
    client = create_app(make_settings(configs_dir, [ORIGIN])).test_client()
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


async def test_no_origin_is_allowed_by_default(configs_dir: Path) -> None:
    client = create_app(make_settings(configs_dir, [])).test_client()
    response = await client.get("/api/configs", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers
