from pathlib import Path

from tests.conftest import MAC, Client, Outside


async def test_delete_removes_the_config(client: Client, outside: Outside) -> None:
    await outside.put(MAC, {})
    response = await client.delete(f"/api/configs/{MAC.upper()}")
    assert response.status_code == 204
    assert await response.get_data() == b""
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 404
    assert (await (await client.get("/api/configs")).get_json())["count"] == 0


async def test_delete_of_unknown_mac_is_404(client: Client) -> None:
    response = await client.delete(f"/api/configs/{MAC}")
    assert response.status_code == 404
    body = await response.get_json()
    assert body["code"] == "RECORD_NOT_FOUND"
    assert "not found" in body["error"]


async def test_delete_with_invalid_mac_is_400(client: Client) -> None:
    response = await client.delete("/api/configs/aa-bb-cc-dd-ee-ff-00")
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "INVALID_OPERATION"


async def test_delete_in_missing_directory_is_503(client: Client, configs_dir: Path) -> None:
    configs_dir.rmdir()
    response = await client.delete(f"/api/configs/{MAC}")
    assert response.status_code == 503
    assert (await response.get_json())["code"] == "STORAGE_UNAVAILABLE"


async def test_delete_of_a_directory_named_like_a_config_is_422(
    client: Client, configs_dir: Path
) -> None:
    (configs_dir / f"{MAC}.json").mkdir()
    response = await client.delete(f"/api/configs/{MAC}")
    assert response.status_code == 422
    assert (configs_dir / f"{MAC}.json").is_dir()
