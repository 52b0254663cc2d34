"""Every dashboard panel, evaluated by a real Prometheus scraping the real server every second."""

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import MAC, OTHER_MAC
from tests.pg import TEMPLATE, Admin, Cluster
from tests.server import TLS, Server, free_port, running_server
from tests.test_observability import ALERTS, dashboard, metric_names, walk_panels
from tests.tools import find, needs

PROMETHEUS = find("prometheus")
pytestmark = needs("prometheus", "Debian package prometheus")
# Grafana's variables, as Grafana would set them for a 1 s scrape interval (and a bit more).
LIVE_VARIABLES = {"$__rate_interval": "10s", "$job": "quart-iot", "$instance": ".*"}
COUNT_METRIC = "iot_config_files"
DEADLINE = 25.0


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: list[str]
    no_value: str | None

    @property
    def shows_the_count(self) -> bool:
        return any(COUNT_METRIC in metric_names(expr) for expr in self.exprs)


def panels() -> list[Panel]:
    found = []
    for panel in walk_panels(dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        exprs = [target["expr"] for target in panel["targets"]]
        for variable, value in LIVE_VARIABLES.items():
            exprs = [expr.replace(variable, value) for expr in exprs]
        no_value = panel["fieldConfig"]["defaults"].get("noValue")
        found.append(Panel(panel["title"], exprs, no_value))
    return found


class Prometheus:
    """`prometheus` on a loopback port, scraping one server every second."""

    def __init__(self, directory: Path, target: Server) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "quart-iot",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [f"127.0.0.1:{target.port}"]}],
                }
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert PROMETHEUS is not None
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_until(lambda: self.query("up") != [])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def query(self, expr: str) -> list[Any]:
        try:
            response = httpx.get(
                f"{self.url}/api/v1/query", params={"query": expr}, timeout=10, verify=TLS
            )
        except httpx.TransportError:
            return []  # not listening yet
        if response.status_code == 503:
            return []  # listening, but its storage is not ready yet
        assert response.status_code == 200, (expr, response.text)
        result: list[Any] = response.json()["data"]["result"]
        return result

    def answers(self, panel: Panel) -> bool:
        """Whether the panel would show a value now (any of its queries returns one)."""
        return any(self.query(expr) for expr in panel.exprs)

    @staticmethod
    def wait_until(condition: Callable[[], bool]) -> None:
        """Until condition() holds, or DEADLINE passed (the caller's assertion then says why)."""
        deadline = time.monotonic() + DEADLINE
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.25)


def traffic(server: Server, running: threading.Event) -> None:
    """What the app and the devices do: list, read, save, probe, and the odd unknown MAC."""
    with httpx.Client(base_url=server.url, timeout=10, verify=TLS) as http:
        while running.is_set():
            http.get("/api/configs")
            http.get(f"/api/configs/{MAC}")
            http.get(f"/api/configs/{MAC}.json")
            http.put(f"/api/configs/{MAC}", json={"content": {"deviceName": "Porch"}})
            http.get("/api/health")
            time.sleep(0.2)  # a few requests a second: every panel's rate shows


@contextmanager
def scraped_under_traffic(base: Path, server: Server) -> Iterator[Prometheus]:
    """A real Prometheus scraping `server` while a thread sends it traffic."""
    prometheus = Prometheus(base, server)
    running = threading.Event()
    running.set()
    sender = threading.Thread(target=traffic, args=(server, running))
    sender.start()
    try:
        prometheus.start()
        yield prometheus
    finally:
        running.clear()
        sender.join()
        prometheus.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Prometheus]]:
    base = tmp_path_factory.mktemp("live")
    configs = base / "configs"
    configs.mkdir()
    (configs / f"{OTHER_MAC}.json").write_text('{"deviceName": "Gate"}')
    # MQTT on, with nothing listening on the port: a broker outage, so the MQTT row has values.
    with (
        running_server(configs, MQTT_URL=f"mqtt://127.0.0.1:{free_port()}") as server,
        scraped_under_traffic(base, server) as prometheus,
    ):
        yield server, prometheus


def silent(prometheus: Prometheus, chosen: list[Panel]) -> list[str]:
    return [panel.title for panel in chosen if not prometheus.answers(panel)]


def test_every_panel_has_a_value_under_traffic(live: tuple[Server, Prometheus]) -> None:
    _, prometheus = live
    every = panels()
    assert len(every) > 20
    prometheus.wait_until(lambda: not silent(prometheus, every))
    blank = silent(prometheus, every)
    assert not blank, f"blank panels: {blank}"


def test_in_a_directory_outage_the_count_is_unknown_and_the_rest_answers(
    live: tuple[Server, Prometheus],
) -> None:
    server, prometheus = live
    count_panels = [panel for panel in panels() if panel.shows_the_count]
    others = [panel for panel in panels() if not panel.shows_the_count]
    assert count_panels
    away = server.directory.with_name("away")
    server.directory.rename(away)
    try:
        prometheus.wait_until(lambda: prometheus.query("iot_config_storage_available == 0") != [])
        assert prometheus.query("iot_config_storage_available == 0") != []
        assert silent(prometheus, count_panels) == [panel.title for panel in count_panels]
        assert {panel.no_value for panel in count_panels} == {"unknown"}
        blank = silent(prometheus, others)
        assert not blank, f"blank panels: {blank}"
    finally:
        away.rename(server.directory)


@pytest.fixture(scope="module")
def live_postgres(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: Cluster, pg_admin: Admin
) -> Iterator[tuple[Server, Prometheus]]:
    """The same, with the PostgreSQL store (a database of its own for the module)."""
    base = tmp_path_factory.mktemp("live-postgres")
    pg_admin.execute(f"CREATE DATABASE live_dashboard TEMPLATE {TEMPLATE}")
    env = {"DATABASE_URL": pg_cluster.url("live_dashboard"), "DB_TIMEOUT": "0.5"}
    with running_server(base, MQTT_URL=f"mqtt://127.0.0.1:{free_port()}", **env) as server:
        httpx.put(
            f"{server.url}/api/configs/{OTHER_MAC}",
            json={"content": {"deviceName": "G"}},
            verify=TLS,
        )
        with scraped_under_traffic(base, server) as prometheus:
            yield server, prometheus
    pg_admin.execute_later("DROP DATABASE IF EXISTS live_dashboard WITH (FORCE)")


def test_with_postgresql_every_panel_answers_and_an_outage_shows_then_ends(
    live_postgres: tuple[Server, Prometheus], pg_cluster: Cluster
) -> None:
    _, prometheus = live_postgres
    count_panels = [panel for panel in panels() if panel.shows_the_count]
    others = [panel for panel in panels() if not panel.shows_the_count]
    prometheus.wait_until(lambda: not silent(prometheus, panels()))
    assert not silent(prometheus, panels()), "blank panels"
    pg_cluster.stop()
    try:
        prometheus.wait_until(lambda: prometheus.query("iot_config_storage_available == 0") != [])
        assert prometheus.query("iot_config_storage_available == 0") != []
        assert silent(prometheus, count_panels) == [panel.title for panel in count_panels]
        assert not silent(prometheus, others), "blank panels in the outage"
    finally:
        pg_cluster.start()
    prometheus.wait_until(lambda: prometheus.query("iot_config_storage_available == 1") != [])
    assert prometheus.query("iot_config_storage_available == 1") != []  # by itself, no restart
    prometheus.wait_until(lambda: not silent(prometheus, count_panels))
    assert not silent(prometheus, count_panels)
