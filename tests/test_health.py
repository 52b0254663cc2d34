from pathlib import Path

from tests.conftest import Client


async def test_healthy_when_the_directory_is_usable(client: Client) -> None:
    response = await client.get("/api/health")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "healthy"
    assert body["storage"] == "read-write"


async def test_unhealthy_when_the_directory_is_missing(client: Client, configs_dir: Path) -> None:
    configs_dir.rmdir()
    response = await client.get("/api/health")
    assert response.status_code == 503
    body = await response.get_json()
    assert body["status"] == "unhealthy"
    assert "does not exist" in body["reason"] or "missing" in body["reason"]
    assert str(configs_dir) not in body["reason"]


async def test_unhealthy_when_the_path_is_a_file(client: Client, configs_dir: Path) -> None:
    configs_dir.rmdir()
    configs_dir.write_text("not a directory")
    response = await client.get("/api/health")
    assert response.status_code == 503
    assert "not a directory" in (await response.get_json())["reason"]


async def test_recovers_when_the_directory_returns(client: Client, configs_dir: Path) -> None:
    configs_dir.rename(configs_dir.with_name("away"))
    assert (await client.get("/api/health")).status_code == 503
    assert (await client.get("/api/configs")).status_code == 503
    configs_dir.with_name("away").rename(configs_dir)
    assert (await client.get("/api/health")).status_code == 200
    assert (await client.get("/api/configs")).status_code == 200


async def test_liveness_touches_no_disk(client: Client, configs_dir: Path) -> None:
    configs_dir.rmdir()
    response = await client.get("/api/health/live")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "alive"}
