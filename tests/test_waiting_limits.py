"""The bounds on held requests: per device, per subject, none for anonymous requests (item 2)."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from quart_iot.app import create_app
from quart_iot.oidc.errors import Unauthorized
from quart_iot.settings import Settings
from quart_iot.waiting import Waiting
from tests.conftest import MAC, OTHER_MAC, Client, write_config
from tests.oidc_provider import AUDIENCE, Provider, running_provider

Headers = dict[str, str]


async def etag_of(client: Client, mac: str, headers: Headers) -> str:
    response = await client.get(f"/api/configs/{mac}.json", headers=headers)
    assert response.status_code == 200
    return response.headers["ETag"]


def long_poll(client: Client, mac: str, etag: str, headers: Headers) -> "asyncio.Task[Any]":
    headers = {**headers, "If-None-Match": etag, "Prefer": "wait=5"}
    return asyncio.create_task(client.get(f"/api/configs/{mac}.json", headers=headers))


async def held(client: Client, count: int, kind: str = "long_poll") -> None:
    """Until the app holds this many requests of this kind (its gauge says so)."""
    sample = f'iot_waiting_requests{{kind="{kind}"}} '
    async with asyncio.timeout(10):
        while True:
            text = await (await client.get("/metrics")).get_data(as_text=True)
            if any(
                line.startswith(sample) and float(line.split()[-1]) >= count
                for line in text.splitlines()
            ):
                return
            await asyncio.sleep(0.01)


async def refused_with(response: Any, setting: str) -> None:
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    body = await response.get_json()
    assert body["code"] == "TOO_MANY_WAITERS"
    assert body["details"]["setting"] == setting
    assert setting in body["error"]


async def test_one_device_cannot_hold_more_than_its_bound_of_long_polls(configs_dir: Path) -> None:
    write_config(configs_dir, MAC, {"v": 1})
    write_config(configs_dir, OTHER_MAC, {"v": 1})
    settings = Settings(esp32_configs_dir=configs_dir, max_waiters_per_device=2, _env_file=None)
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        etag, other = await etag_of(client, MAC, {}), await etag_of(client, OTHER_MAC, {})
        polls = [long_poll(client, MAC, etag, {}) for _ in range(2)]
        await held(client, 2)
        await refused_with(await long_poll(client, MAC, etag, {}), "MAX_WAITERS_PER_DEVICE")
        assert (await long_poll(client, MAC, '"older"', {})).status_code == 200  # no wait
        polls.append(long_poll(client, OTHER_MAC, other, {}))  # another device still waits
        await held(client, 3)
        for mac in (MAC, OTHER_MAC):
            assert (
                await client.put(f"/api/configs/{mac}", json={"content": {}})
            ).status_code == 200
        assert [(await poll).status_code for poll in polls] == [200, 200, 200]


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as provider:
        yield provider


@pytest.fixture
async def protected(configs_dir: Path, provider: Provider) -> AsyncIterator[Quart]:
    write_config(configs_dir, MAC, {"v": 1})
    write_config(configs_dir, OTHER_MAC, {"v": 1})
    settings = Settings(
        esp32_configs_dir=configs_dir,
        oidc_issuer=provider.issuer,
        oidc_audience=AUDIENCE,
        max_waiters_per_subject=2,
        _env_file=None,
    )
    app = create_app(settings)
    async with app.test_app():
        yield app


def bearer(provider: Provider, client_id: str) -> Headers:
    return {"Authorization": f"Bearer {provider.token(client_id)}"}


async def test_one_subject_cannot_hold_more_than_its_bound(
    protected: Quart, provider: Provider
) -> None:
    client = protected.test_client()
    reader, device = bearer(provider, "reader"), bearer(provider, "device-a")
    etag = await etag_of(client, MAC, reader)
    first = long_poll(client, MAC, etag, reader)
    async with client.request("/api/configs/events", headers=reader) as stream:
        await stream.send_complete()
        await stream.receive()  # the stream is held from its first chunk
        await held(client, 1)
        await held(client, 1, "events")
        third = await long_poll(client, OTHER_MAC, await etag_of(client, OTHER_MAC, reader), reader)
        await refused_with(third, "MAX_WAITERS_PER_SUBJECT")
        refused = await client.get("/api/configs/events", headers=reader)
        await refused_with(refused, "MAX_WAITERS_PER_SUBJECT")
        own = long_poll(client, MAC, etag, device)  # another subject still waits
        await held(client, 2)
        await stream.disconnect()
    writer = bearer(provider, "writer")
    assert (
        await client.put(f"/api/configs/{MAC}", json={"content": {}}, headers=writer)
    ).status_code == 200
    assert [(await poll).status_code for poll in (first, own)] == [200, 200]


async def test_with_access_control_on_a_request_without_a_subject_never_waits(
    protected: Quart,
) -> None:
    waiting = Waiting.of(protected)
    headers = {"If-None-Match": '"x"', "Prefer": "wait=30"}
    async with protected.test_request_context(f"/api/configs/{MAC}.json", headers=headers):
        assert waiting.requested_wait() == 0
        with pytest.raises(Unauthorized):
            waiting.stream(None, None)
