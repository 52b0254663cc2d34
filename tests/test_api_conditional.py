import asyncio
import json

from tests.conftest import MAC, Client, Outside
from tests.harness import ERROR_KEYS


async def etag_of(client: Client, mac: str = MAC) -> str:
    return (await client.get(f"/api/configs/{mac}")).headers["ETag"]


async def test_etag_is_the_same_on_get_device_get_and_put(client: Client) -> None:
    put = await client.put(f"/api/configs/{MAC}", json={"content": {"a": 1}})
    device = await client.get(f"/api/configs/{MAC}.json")
    assert put.headers["ETag"] == await etag_of(client) == device.headers["ETag"]


async def test_etag_changes_with_content_and_is_derived_from_bytes(client: Client) -> None:
    first = (await client.put(f"/api/configs/{MAC}", json={"content": {"a": 1}})).headers["ETag"]
    second = (await client.put(f"/api/configs/{MAC}", json={"content": {"a": 2}})).headers["ETag"]
    again = (await client.put(f"/api/configs/{MAC}", json={"content": {"a": 1}})).headers["ETag"]
    assert first != second
    assert first == again


async def test_if_match_with_current_etag_writes(client: Client) -> None:
    await client.put(f"/api/configs/{MAC}", json={"content": {"v": 1}})
    response = await client.put(
        f"/api/configs/{MAC}",
        json={"content": {"v": 2}},
        headers={"If-Match": await etag_of(client)},
    )
    assert response.status_code == 200


async def test_if_match_mismatch_is_412_and_changes_nothing(
    client: Client, outside: Outside
) -> None:
    await outside.put(MAC, {"v": 1})
    response = await client.put(
        f"/api/configs/{MAC}", json={"content": {"v": 2}}, headers={"If-Match": '"stale"'}
    )
    assert response.status_code == 412
    body = await response.get_json()
    assert body["code"] == "PRECONDITION_FAILED"
    assert set(body) == ERROR_KEYS
    assert body["status"] == response.status_code
    kept = await client.get(f"/api/configs/{MAC}.json")
    assert json.loads(await kept.get_data()) == {"v": 1}


async def test_if_match_on_missing_config_is_412(client: Client) -> None:
    response = await client.put(
        f"/api/configs/{MAC}", json={"content": {}}, headers={"If-Match": "*"}
    )
    assert response.status_code == 412


async def test_if_none_match_star_creates_only(client: Client) -> None:
    headers = {"If-None-Match": "*"}
    first = await client.put(f"/api/configs/{MAC}", json={"content": {"v": 1}}, headers=headers)
    second = await client.put(f"/api/configs/{MAC}", json={"content": {"v": 2}}, headers=headers)
    assert (first.status_code, second.status_code) == (200, 412)


async def test_delete_with_if_match(client: Client, outside: Outside) -> None:
    await outside.put(MAC, {"v": 1})
    stale = await client.delete(f"/api/configs/{MAC}", headers={"If-Match": '"stale"'})
    assert stale.status_code == 412
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 200
    current = await client.delete(
        f"/api/configs/{MAC}", headers={"If-Match": await etag_of(client)}
    )
    assert current.status_code == 204


async def test_racing_conditional_writers_exactly_one_wins(client: Client) -> None:
    await client.put(f"/api/configs/{MAC}", json={"content": {"v": 0}})
    for round_ in range(10):
        etag = await etag_of(client)
        responses = await asyncio.gather(
            *(
                client.put(
                    f"/api/configs/{MAC}",
                    json={"content": {"round": round_, "writer": i}},
                    headers={"If-Match": etag},
                )
                for i in range(4)
            )
        )
        assert sorted(r.status_code for r in responses) == [200, 412, 412, 412]


async def test_without_conditions_last_write_wins(client: Client) -> None:
    for i in range(3):
        assert (
            await client.put(f"/api/configs/{MAC}", json={"content": {"i": i}})
        ).status_code == 200
    assert (await (await client.get(f"/api/configs/{MAC}")).get_json())["content"] == {"i": 2}
