"""Change notifications over MQTT, against a real Mosquitto broker that the tests start."""

import asyncio
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from pydantic import ValidationError
from quart import Quart

from quart_iot import notifications as notifications_module
from quart_iot.app import create_app
from quart_iot.notifications import Broker, Notifications
from quart_iot.settings import Settings, describe
from tests.conftest import MAC, OTHER_MAC, Client
from tests.server import TLS, Server, free_port
from tests.tools import tool

TOPIC = "iotsupport/updates/configs"
USER, PASSWORD = "quart", "s3cret:/@%"  # needs percent-encoding in a URL
PASSWORD_IN_URL = "s3cret%3A%2F%40%25"
MACS = [f"0a-00-00-00-00-{n:02x}" for n in range(8)]
SENTINEL = "5e-5e-5e-5e-5e-5e"

Received = tuple[str, Any, int, bool]  # topic, parsed payload, qos, retain

CONFIG = """\
per_listener_settings true
persistence true
persistence_location {dir}/
user {user}
log_dest file {dir}/mosquitto.log
listener {port} 127.0.0.1
allow_anonymous true
listener {auth_port} 127.0.0.1
allow_anonymous false
password_file {dir}/passwd
"""

OPENSSL_REQ = (
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
)

TLS_LISTENER = """\
listener {tls_port} 127.0.0.1
allow_anonymous true
certfile {dir}/cert.pem
keyfile {dir}/key.pem
"""


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class Mosquitto:
    """A broker on loopback owned by one test: anonymous, password and (optionally) TLS."""

    def __init__(self, directory: Path, tls: bool = False) -> None:
        directory.mkdir()
        self.directory = directory
        self.port, self.auth_port, self.tls_port = free_ports(3)
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        passwd = directory / "passwd"
        subprocess.run(
            ["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD],
            check=True,
            capture_output=True,
        )
        values = {
            "dir": directory,
            "user": getpass.getuser(),  # as root, stay root: the temp dir is not world-readable
            "port": self.port,
            "auth_port": self.auth_port,
            "tls_port": self.tls_port,
        }
        config = CONFIG + (TLS_LISTENER if tls else "")
        (directory / "mosquitto.conf").write_text(config.format(**values))
        if tls:
            self._make_certificate()

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1, its own CA."""
        key, cert = self.directory / "key.pem", self.directory / "cert.pem"
        tool("openssl", "Debian package openssl")
        subprocess.run(
            [*OPENSSL_REQ.split(), "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 10.0) -> None:
        mosquitto = tool("mosquitto", "Debian package mosquitto")
        self.process = subprocess.Popen(
            [mosquitto, "-c", str(self.directory / "mosquitto.conf")],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._accepts(self.port) or not self._accepts(self.auth_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start: {self.log()}")
            time.sleep(0.02)

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM (sessions are saved to the persistence file) and wait."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # in case a test paused it
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def stopped_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker")
    yield broker
    broker.stop()


def settings_of(tmp_path: Path, **values: Any) -> Settings:
    """Settings with a directory store: for the tests of the broker's side, the same whatever
    the store (what a write publishes is tested on both stores)."""
    directory = tmp_path / "configs"
    directory.mkdir(exist_ok=True)
    return Settings(esp32_configs_dir=directory, _env_file=None, **values)


def mqtt_settings(tmp_path: Path, url: str | None, **values: Any) -> Settings:
    return settings_of(tmp_path, mqtt_url=url, **values)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Quart]:
    app = create_app(settings)
    async with app.test_app():
        yield app


def notifications(app: Quart) -> Notifications:
    extension: Notifications = app.extensions["notifications"]
    return extension


@asynccontextmanager
async def subscriber(
    port: int, identifier: str | None = None, topic: str = TOPIC
) -> AsyncIterator[aiomqtt.Client]:
    """A subscriber; with an identifier, a persistent session that the broker keeps for it."""
    client = aiomqtt.Client(
        "127.0.0.1", port, identifier=identifier, clean_session=identifier is None
    )
    async with client:
        await client.subscribe(topic, qos=1)
        yield client


async def receive(client: aiomqtt.Client, count: int, timeout: float = 20) -> list[Received]:
    received: list[Received] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            payload = json.loads(message.payload)
            received.append((message.topic.value, payload, message.qos, message.retain))
            if len(received) == count:
                break
    return received


def expected(*macs: str, topic: str = TOPIC) -> list[Received]:
    return [(topic, {"filename": f"{mac}.json"}, 1, False) for mac in macs]


async def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def put(client: Client, mac: str, **kwargs: Any) -> int:
    kwargs.setdefault("json", {"content": {"deviceName": mac}})
    return (await client.put(f"/api/configs/{mac}", **kwargs)).status_code


def sample(metrics_text: str, name: str) -> float:
    """The value of one sample (`name` with its labels) in Prometheus text format."""
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def scrape(client: Client) -> str:
    return await (await client.get("/metrics")).get_data(as_text=True)


def counted(extension: Notifications, status: str) -> float:
    value = extension.publishes.get({"status": status})
    assert isinstance(value, int | float)
    return value


async def health(client: Client) -> tuple[int, Any]:
    response = await client.get("/api/health")
    return response.status_code, await response.get_json()


# -- what is published, and what is not ----------------------------------------------------


async def test_a_message_for_each_successful_save_or_patch_and_none_for_failures_or_deletes(
    make_settings: Callable[..., Settings], mosquitto: Mosquitto
) -> None:
    settings = make_settings(mqtt_url=mosquitto.url)
    async with subscriber(mosquitto.port) as sub, serving(settings) as app:
        client = app.test_client()
        assert await put(client, MAC) == 200  # create
        assert await put(client, MAC, json={"content": {"v": 2}}) == 200  # update
        assert await put(client, OTHER_MAC.upper()) == 200  # canonical name in the message
        assert await put(client, MAC, json={"content": {}, "allow_overwrite": False}) == 409
        assert await put(client, MAC, json={"content": []}) == 400
        assert await put(client, "aa:bb:cc:dd:ee:ff") == 400
        assert await put(client, MAC, headers={"If-Match": '"stale"'}) == 412
        assert (await client.delete(f"/api/configs/{OTHER_MAC}")).status_code == 204
        assert (await client.delete(f"/api/configs/{OTHER_MAC}")).status_code == 404
        merge = {"Content-Type": "application/merge-patch+json"}
        patched = await client.patch(f"/api/configs/{MAC}", data='{"v": 3}', headers=merge)
        assert patched.status_code == 200
        stale = {**merge, "If-Match": '"stale"'}
        refused = await client.patch(f"/api/configs/{MAC}", data="{}", headers=stale)
        assert refused.status_code == 412
        model = {"name": "n", "configSchema": None}
        assert (await client.put("/api/models/m", json=model)).status_code == 200  # not a device
        assert await put(client, SENTINEL) == 200
        # One publisher, QoS 1, in order: had a failure published anything, it would come
        # before the sentinel.
        assert await receive(sub, 5) == expected(MAC, MAC, OTHER_MAC, MAC, SENTINEL)


async def test_a_save_the_storage_refuses_publishes_nothing(
    configs_dir: Path, mosquitto: Mosquitto
) -> None:
    settings = Settings(esp32_configs_dir=configs_dir, mqtt_url=mosquitto.url, _env_file=None)
    async with subscriber(mosquitto.port) as sub, serving(settings) as app:
        client = app.test_client()
        configs_dir.rename(configs_dir.with_name("away"))
        assert await put(client, MAC) == 503
        configs_dir.with_name("away").rename(configs_dir)
        assert await put(client, SENTINEL) == 200
        assert await receive(sub, 1) == expected(SENTINEL)


async def test_messages_are_not_retained(tmp_path: Path, mosquitto: Mosquitto) -> None:
    settings = mqtt_settings(tmp_path, mosquitto.url)
    async with subscriber(mosquitto.port) as early, serving(settings) as app:
        client = app.test_client()
        assert await put(client, MAC) == 200
        assert await receive(early, 1) == expected(MAC)
        async with subscriber(mosquitto.port) as late:
            assert await put(client, SENTINEL) == 200
            # A retained message would reach a new subscriber first, on subscribing.
            assert await receive(late, 1) == expected(SENTINEL)


@pytest.mark.parametrize(
    ("url", "credentials"),
    [
        ("mqtt://{user}:{password}@127.0.0.1:{port}", {}),
        ("mqtt://127.0.0.1:{port}", {"mqtt_username": USER, "mqtt_password": PASSWORD}),
        (
            "mqtt://nobody:wrong@127.0.0.1:{port}",
            {"mqtt_username": USER, "mqtt_password": PASSWORD},
        ),
    ],
    ids=["in-url", "settings", "settings-win-over-url"],
)
async def test_credentials_and_topic(
    tmp_path: Path, mosquitto: Mosquitto, url: str, credentials: dict[str, str]
) -> None:
    url = url.format(user=USER, password=PASSWORD_IN_URL, port=mosquitto.auth_port)
    settings = mqtt_settings(tmp_path, url, mqtt_topic="site/a/configs", **credentials)
    async with subscriber(mosquitto.port, topic="site/#") as sub, serving(settings) as app:
        assert await put(app.test_client(), MAC) == 200
        assert await receive(sub, 1) == expected(MAC, topic="site/a/configs")


async def test_refused_credentials_never_fail_a_request(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"mqtt://{USER}:wrong@127.0.0.1:{mosquitto.auth_port}"
    async with serving(mqtt_settings(tmp_path, url)) as app:
        notifications(app).flush_seconds = 0
        client = app.test_client()
        await until(lambda: "MQTT broker unavailable" in caplog.text)
        assert await put(client, MAC) == 200
        assert await health(client) == (
            200,
            {"status": "healthy", "reason": None, "storage": "read-write", "mqtt": "disconnected"},
        )
        assert sample(await scrape(client), "iot_mqtt_connected") == 0
        assert "not authorized" in caplog.text.lower()


# -- the broker going away -------------------------------------------------------------------


async def test_broker_restart_loses_nothing_that_was_queued(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with serving(mqtt_settings(tmp_path, mosquitto.url)) as app:
        client, extension = app.test_client(), notifications(app)
        async with subscriber(mosquitto.port, "persistent") as sub:
            assert await put(client, MACS[0]) == 200
            assert await receive(sub, 1) == expected(MACS[0])
        await until(lambda: extension.queued == 0)
        mosquitto.stop()
        await until(lambda: not extension.connected)
        for mac in MACS[1:6]:
            assert await put(client, mac) == 200
        assert (await health(client))[1]["mqtt"] == "disconnected"
        assert extension.queued == 5
        mosquitto.start()
        async with subscriber(mosquitto.port, "persistent") as sub:
            assert await receive(sub, 5) == expected(*MACS[1:6])
            assert await put(client, SENTINEL) == 200  # and nothing was published twice
            assert await receive(sub, 1) == expected(SENTINEL)
        assert (await health(client))[1]["mqtt"] == "connected"
        metrics = await scrape(client)
        assert sample(metrics, 'iot_mqtt_publish_total{status="published"}') == 7
        assert sample(metrics, 'iot_mqtt_publish_total{status="dropped"}') == 0


async def test_a_publish_never_acknowledged_is_kept_and_sent_again(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notifications_module, "PUBLISH_TIMEOUT", 0.3)
    async with subscriber(mosquitto.port, "persistent"):
        pass
    mosquitto.stop()  # saves the subscriber's session
    mosquitto.start()
    async with serving(mqtt_settings(tmp_path, mosquitto.url)) as app:
        client, extension = app.test_client(), notifications(app)
        await until(lambda: extension.connected)
        assert mosquitto.process is not None
        mosquitto.process.send_signal(signal.SIGSTOP)  # a broker that hangs: no PUBACK
        assert await put(client, MAC) == 200
        await until(lambda: counted(extension, "failed") >= 1)
        assert extension.queued == 1
        mosquitto.process.kill()  # it never processed that publish
        mosquitto.process.wait()
        mosquitto.start()
        async with subscriber(mosquitto.port, "persistent") as sub:
            assert await receive(sub, 1) == expected(MAC)
            assert await put(client, SENTINEL) == 200
            assert await receive(sub, 1) == expected(SENTINEL)


async def test_full_queue_drops_and_counts_while_the_broker_is_down(
    tmp_path: Path, stopped_mosquitto: Mosquitto
) -> None:
    broker = stopped_mosquitto
    broker.start()  # once, so that the broker keeps a session for the subscriber
    async with subscriber(broker.port, "persistent"):
        pass
    broker.stop()
    settings = mqtt_settings(tmp_path, broker.url, mqtt_queue_size=2)
    async with serving(settings) as app:
        client = app.test_client()
        for mac in MACS[:5]:
            assert await put(client, mac) == 200
        assert await health(client) == (
            200,
            {"status": "healthy", "reason": None, "storage": "read-write", "mqtt": "disconnected"},
        )
        metrics = await scrape(client)
        assert sample(metrics, 'iot_mqtt_publish_total{status="dropped"}') == 3
        assert sample(metrics, 'iot_mqtt_publish_total{status="published"}') == 0
        assert sample(metrics, "iot_mqtt_queued") == 2
        assert sample(metrics, "iot_mqtt_connected") == 0
        broker.start()
        async with subscriber(broker.port, "persistent") as sub:
            assert await receive(sub, 2) == expected(*MACS[:2])  # the oldest were kept
            assert await put(client, SENTINEL) == 200
            assert await receive(sub, 1) == expected(SENTINEL)
        metrics = await scrape(client)
        assert sample(metrics, 'iot_mqtt_publish_total{status="published"}') == 3
        assert sample(metrics, "iot_mqtt_connected") == 1
        assert sample(metrics, "iot_mqtt_queued") == 0


async def test_saves_of_one_device_merge_so_the_queue_counts_devices(
    tmp_path: Path, stopped_mosquitto: Mosquitto
) -> None:
    broker = stopped_mosquitto
    broker.start()  # once, so that the broker keeps a session for the subscriber
    async with subscriber(broker.port, "persistent"):
        pass
    broker.stop()
    settings = mqtt_settings(tmp_path, broker.url, mqtt_queue_size=3)
    async with serving(settings) as app:
        client, extension = app.test_client(), notifications(app)
        for version in range(3):
            assert await put(client, MAC, json={"content": {"v": version}}) == 200
        assert await put(client, OTHER_MAC) == 200
        assert extension.queued == 2
        assert (counted(extension, "merged"), counted(extension, "dropped")) == (2, 0)
        broker.start()
        async with subscriber(broker.port, "persistent") as sub:
            assert await receive(sub, 2) == expected(MAC, OTHER_MAC)
            assert await put(client, SENTINEL) == 200  # and nothing else was sent before it
            assert await receive(sub, 1) == expected(SENTINEL)
        assert sample(await scrape(client), 'iot_mqtt_publish_total{status="merged"}') == 2


async def test_a_save_during_the_publish_of_its_device_is_not_merged_into_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # That publish may already have reached the device, which then fetched the older file.
    assert mosquitto.process is not None
    async with (
        subscriber(mosquitto.port) as sub,
        serving(mqtt_settings(tmp_path, mosquitto.url)) as app,
    ):
        client, extension = app.test_client(), notifications(app)
        await until(lambda: extension.connected)
        mosquitto.process.send_signal(signal.SIGSTOP)  # no PUBACK until it resumes
        assert await put(client, MAC) == 200
        await until(lambda: extension.in_flight == MAC)
        assert await put(client, MAC, json={"content": {"v": 2}}) == 200
        assert extension.queued == 2
        mosquitto.process.send_signal(signal.SIGCONT)
        assert await receive(sub, 2) == expected(MAC, MAC)
        assert counted(extension, "merged") == 0


async def test_shutdown_flushes_the_queue(tmp_path: Path, mosquitto: Mosquitto) -> None:
    assert mosquitto.process is not None
    async with subscriber(mosquitto.port) as sub:
        mosquitto.process.send_signal(signal.SIGSTOP)  # the app cannot connect yet
        async with serving(mqtt_settings(tmp_path, mosquitto.url)) as app:
            client = app.test_client()
            for mac in MACS:
                assert await put(client, mac) == 200
            assert not notifications(app).connected
            # The broker answers again while the app is stopping: the flush sends everything.
            resume = mosquitto.process.send_signal
            asyncio.get_running_loop().call_later(0.3, resume, signal.SIGCONT)
        assert notifications(app).queued == 0
        assert await receive(sub, len(MACS)) == expected(*MACS)


async def test_shutdown_flush_is_bounded_when_the_broker_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    async with serving(mqtt_settings(tmp_path, url)) as app:
        notifications(app).flush_seconds = 0.2
        assert await put(app.test_client(), MAC) == 200
    assert "stopping with 1 MQTT notification(s) not sent" in caplog.text


# -- TLS ---------------------------------------------------------------------------------------


async def test_mqtts_verifies_the_broker_against_the_trust_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Mosquitto(tmp_path / "broker", tls=True)
    broker.start()
    try:
        url = f"mqtts://127.0.0.1:{broker.tls_port}"
        async with serving(mqtt_settings(tmp_path, url)) as app:  # system store only
            notifications(app).flush_seconds = 0
            await until(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text)
            assert not notifications(app).connected
        # The system trust store, pointed at our test CA (OpenSSL reads SSL_CERT_FILE).
        monkeypatch.setenv("SSL_CERT_FILE", str(broker.directory / "cert.pem"))
        async with (
            subscriber(broker.port) as sub,
            serving(mqtt_settings(tmp_path, url)) as app,
        ):
            assert await put(app.test_client(), MAC) == 200
            assert await receive(sub, 1) == expected(MAC)
    finally:
        broker.stop()


# -- off by default, and settings ----------------------------------------------------------


async def test_off_by_default(client: Client, app: Quart) -> None:
    assert notifications(app).state == "disabled"
    assert await put(client, MAC) == 200
    assert (await health(client))[1]["mqtt"] == "disabled"
    assert "iot_mqtt" not in await scrape(client)


@pytest.mark.parametrize(
    ("values", "broker"),
    [
        ({"mqtt_url": ""}, None),
        ({"mqtt_url": "mqtt://broker"}, Broker("broker", 1883, False, None, None)),
        ({"mqtt_url": "mqtts://broker.example/"}, Broker("broker.example", 8883, True, None)),
        ({"mqtt_url": "mqtt://u:p%40ss@broker:1884"}, Broker("broker", 1884, False, "u", "p@ss")),
        (
            {"mqtt_url": "mqtts://u:p@broker", "mqtt_username": "v", "mqtt_password": "q"},
            Broker("broker", 8883, True, "v", "q"),
        ),
    ],
)
def test_broker_from_settings(
    tmp_path: Path, values: dict[str, str], broker: Broker | None
) -> None:
    settings = settings_of(tmp_path, **values)
    assert Broker.from_settings(settings) == broker


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"mqtt_url": "http://user:hunter2@broker"}, "MQTT_URL"),
        ({"mqtt_url": "mqtt://"}, "MQTT_URL"),
        ({"mqtt_url": "mqtt://user:hunter2@broker:99999"}, "MQTT_URL"),
        ({"mqtt_url": "mqtt://broker:0"}, "MQTT_URL"),
        ({"mqtt_url": "mqtt://broker/topic"}, "MQTT_URL"),
        ({"mqtt_url": "broker:1883"}, "MQTT_URL"),
        ({"mqtt_topic": "devices/+/configs"}, "MQTT_TOPIC"),
        ({"mqtt_topic": ""}, "MQTT_TOPIC"),
        ({"mqtt_queue_size": 0}, "MQTT_QUEUE_SIZE"),
    ],
)
def test_bad_mqtt_settings_are_one_line_naming_them(
    tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        settings_of(tmp_path, **values)
    message = describe(caught.value)
    assert message.startswith(f"invalid settings: {named}: ")
    assert "\n" not in message
    assert "hunter2" not in message


def test_bad_mqtt_url_stops_the_server_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "ESP32_CONFIGS_DIR": str(tmp_path), "MQTT_URL": "http://u:hunter2@x"}
    done = subprocess.run(
        [sys.executable, "-m", "quart_iot"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("quart_iot: invalid settings: MQTT_URL: ")
    assert "hunter2" not in lines[0]


# -- the real server ---------------------------------------------------------------------------


async def test_real_server_notifies_survives_the_broker_and_stops(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    server = Server(tmp_path, {"MQTT_URL": mosquitto.url, "MQTT_QUEUE_SIZE": "10"})
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10, verify=TLS) as http:
            await real_server_scenario(http, mosquitto)
    finally:
        returncode = server.stop()
        log = server.stderr()
        server.log.unlink(missing_ok=True)
    assert returncode == 0
    # SIGTERM with the broker down: a bounded flush, then a clean exit.
    assert "stopping with 1 MQTT notification(s) not sent" in log


async def real_server_scenario(http: httpx.AsyncClient, mosquitto: Mosquitto) -> None:
    async def mqtt_state() -> str:
        state: str = (await http.get("/api/health")).json()["mqtt"]
        return state

    async with subscriber(mosquitto.port) as sub:
        assert (await http.put(f"/api/configs/{MAC.upper()}", json={"content": {}})).is_success
        assert (await http.delete(f"/api/configs/{MAC}")).status_code == 204
        assert (await http.put(f"/api/configs/{OTHER_MAC}", json={"content": {}})).is_success
        assert await receive(sub, 2) == expected(MAC, OTHER_MAC)
    assert await mqtt_state() == "connected"
    metrics = (await http.get("/metrics")).text
    assert sample(metrics, "iot_mqtt_connected") == 1
    assert sample(metrics, 'iot_mqtt_publish_total{status="published"}') == 2
    mosquitto.stop()
    async with asyncio.timeout(20):
        while await mqtt_state() != "disconnected":
            await asyncio.sleep(0.05)
    response = await http.put(f"/api/configs/{MAC}", json={"content": {}})
    assert response.status_code == 200
    health = await http.get("/api/health")
    assert (health.status_code, health.json()["status"]) == (200, "healthy")
