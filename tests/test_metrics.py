from pathlib import Path

from quart import Quart

from quart_iot.app import create_app
from quart_iot.settings import Settings
from tests.conftest import MAC, OTHER_MAC, Client, Outside


async def scrape(client: Client) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return await response.get_data(as_text=True)


async def test_operations_are_counted_by_route_template(client: Client) -> None:
    await client.put(f"/api/configs/{MAC}", json={"content": {}})
    await client.get(f"/api/configs/{MAC}")
    await client.get(f"/api/configs/{OTHER_MAC}")
    text = await scrape(client)
    assert 'iot_config_operations_total{operation="save_config",status="success"} 1' in text
    assert 'iot_config_operations_total{operation="get_config",status="success"} 1' in text
    assert 'iot_config_operations_total{operation="get_config",status="record_not_found"} 1' in text
    assert 'iot_config_operation_duration_seconds_count{operation="get_config"} 2' in text
    assert 'route="/api/configs/<mac_address>"' in text
    assert MAC not in text  # never a raw path in a label
    assert OTHER_MAC not in text


async def test_http_requests_are_counted(client: Client) -> None:
    await client.get("/api/health/live")
    await client.get("/nowhere")
    text = await scrape(client)
    assert 'http_requests_total{method="GET",route="/api/health/live",status="200"} 1' in text
    assert 'http_requests_total{method="GET",route="unmatched",status="404"} 1' in text
    assert "http_request_duration_seconds_bucket" in text


async def test_file_count_is_true_at_every_scrape(client: Client, outside: Outside) -> None:
    assert "iot_config_files 0" in await scrape(client)
    await outside.put(MAC, {})
    await outside.put(OTHER_MAC, {})
    assert "iot_config_files 2" in await scrape(client)
    await outside.remove(MAC)
    assert "iot_config_files 1" in await scrape(client)
    assert "iot_config_storage_available 1" in await scrape(client)


async def test_storage_gauge_drops_when_the_directory_goes(
    client: Client, configs_dir: Path
) -> None:
    assert "\niot_config_files 0\n" in await scrape(client)
    configs_dir.rmdir()
    text = await scrape(client)
    assert "iot_config_storage_available 0" in text
    assert "\niot_config_files " not in text  # unknown: no sample, not the last one


async def test_each_app_has_its_own_registry(settings: Settings, app: Quart) -> None:
    other = create_app(settings)
    assert other.extensions["metrics"].registry is not app.extensions["metrics"].registry
    await app.test_client().get("/api/health/live")
    text = await (await other.test_client().get("/metrics")).get_data(as_text=True)
    assert "/api/health/live" not in text
