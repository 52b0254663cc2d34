import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from quart import Quart

from tests.conftest import MAC, Client
from tests.harness import assert_error_body, raw_request
from tests.server import running_server

ALWAYS_ALLOWED = [
    "localhost",
    "localhost:3201",
    "LocalHost.",
    "127.0.0.1",
    "127.0.0.1:3201",
    "10.42.0.17:3201",  # a probe or a scrape at the pod's IP
    "[::1]:3201",
    "[::1]",
]
REFUSED = [
    "attacker.example",
    "attacker.example:3201",
    "ATTACKER.example.",
    "localhost.attacker.example",
    "127.0.0.1.nip.io",
    "configs.example.org.attacker.example",
    "",
]


@pytest.mark.parametrize("host", ALWAYS_ALLOWED)
async def test_ip_literals_and_localhost_are_always_allowed(client: Client, host: str) -> None:
    response = await client.put(f"/api/configs/{MAC}", json={"content": {}}, headers={"Host": host})
    assert response.status_code == 200


@pytest.mark.parametrize("host", REFUSED)
async def test_a_dns_name_not_allowed_is_421_and_writes_nothing(client: Client, host: str) -> None:
    response = await client.put(f"/api/configs/{MAC}", json={"content": {}}, headers={"Host": host})
    assert response.status_code == 421
    body = await response.get_json()
    assert body["code"] == "HOST_NOT_ALLOWED"
    assert body["status"] == 421
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 404


async def test_the_host_is_refused_before_the_route_or_the_body_is_looked_at(
    client: Client,
) -> None:
    bad_mac_bad_body = await client.put(
        "/api/configs/nope", data=b"{not json", headers={"Host": "attacker.example"}
    )
    unknown_route = await client.get("/api/nothing", headers={"Host": "attacker.example"})
    assert bad_mac_bad_body.status_code == unknown_route.status_code == 421


# Werkzeug cannot route these (an empty or over-long label): hypercorn's empty 500 before.
NOT_HOSTS = [
    "a..b",
    ".",
    "..",
    "a..",
    "a..b:3201",
    "a" * 64 + ".example",
    ".".join(["abcdefghi"] * 26),  # 259 characters: longer than a DNS name can be
]


@pytest.mark.parametrize("host", NOT_HOSTS)
@pytest.mark.parametrize("allowed", [[], ["*"]])
async def test_a_host_that_is_no_host_name_is_a_400_counted_and_logged_once(
    serving: Callable[..., Awaitable[Quart]],
    caplog: pytest.LogCaptureFixture,
    host: str,
    allowed: list[str],
) -> None:
    app = await serving(allowed_hosts=allowed)
    caplog.set_level(logging.INFO)
    caplog.clear()  # the store's start
    client = app.test_client()
    response = await client.get("/api/configs", headers={"Host": host})
    assert response.status_code == 400
    body = await response.get_json()
    assert body["code"] == "INVALID_HOST"
    assert body["status"] == 400
    assert body["correlationId"] == response.headers["X-Request-ID"]
    logged = [r for r in caplog.records if r.name.startswith("quart_iot")]
    assert [r.levelname for r in logged] == ["INFO"]
    assert logged[0].exc_info is None
    scrape = await (await client.get("/metrics")).get_data(as_text=True)
    assert re.search(
        r'\nhttp_requests_total\{method="GET",route="[^"]+",status="400"\} 1\n', scrape
    )


@pytest.mark.parametrize(
    "host", ["a" * 63 + ".example", "under_score.example", "x-1.example.", ".".join(["a"] * 127)]
)
async def test_long_names_within_the_limits_are_hosts(client: Client, host: str) -> None:
    response = await client.get("/api/configs", headers={"Host": host})
    assert response.status_code == 421  # a host, not one of ours


@pytest.fixture
async def configured(serving: Callable[..., Awaitable[Quart]]) -> Quart:
    return await serving(allowed_hosts=["Configs.Example.Org.", "quart-iot.iot.svc.cluster.local"])


@pytest.mark.parametrize(
    "host",
    [
        "configs.example.org",
        "CONFIGS.example.org:443",
        "configs.example.org.",
        "quart-iot.iot.svc.cluster.local:80",
        "127.0.0.1",
    ],
)
async def test_allowed_hosts_names_are_matched_without_case_port_or_final_dot(
    configured: Quart, host: str
) -> None:
    response = await configured.test_client().get("/api/configs", headers={"Host": host})
    assert response.status_code == 200


async def test_allowed_hosts_does_not_allow_other_names(configured: Quart) -> None:
    client = configured.test_client()
    for host in ("example.org", "www.configs.example.org", "attacker.example"):
        response = await client.get("/api/configs", headers={"Host": host})
        assert response.status_code == 421, host


async def test_a_star_allows_every_host(serving: Callable[..., Awaitable[Quart]]) -> None:
    client = (await serving(allowed_hosts=["*"])).test_client()
    response = await client.get("/api/configs", headers={"Host": "anything.example"})
    assert response.status_code == 200


def test_the_real_server_refuses_a_rebound_host_with_the_json_error(tmp_path: Path) -> None:
    configs_dir = tmp_path  # about the HTTP server, whatever the store: one store is enough
    with running_server(configs_dir) as server:
        refused = raw_request(
            server.port,
            "PUT",
            f"/api/configs/{MAC}".encode(),
            b'{"content": {}}',
            host=b"attacker.example:" + str(server.port).encode(),
        )
        assert_error_body(refused, 421, "HOST_NOT_ALLOWED")
        no_host = raw_request(server.port, "PUT", f"/api/configs/{MAC}".encode(), host=b"a..b")
        assert_error_body(no_host, 400, "INVALID_HOST")
        assert list(configs_dir.iterdir()) == []
        allowed = raw_request(
            server.port,
            "PUT",
            f"/api/configs/{MAC}".encode(),
            b'{"content": {}}',
            host=b"[::1]:" + str(server.port).encode(),
        )
        assert allowed.status == 200
