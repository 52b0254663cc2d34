"""Notifications extension: tell devices over MQTT that their config changed.

After each save or restore that took effect (the store's write events), the device's MAC goes
into a bounded, ordered set of pending notifications: a second save of a device still
pending merges into it (the payload, `{"filename": "<mac>.json"}`, names only the file), so
the bound counts devices, not saves.
A background task publishes them with QoS 1 and forgets one only once the broker acknowledged
it, reconnecting with backoff while the broker is away. A request never waits for the broker.
"""

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt
import anyio.to_thread
from aioprometheus.collectors import Counter, Gauge
from quart import Quart, current_app

from quart_iot.metrics import Metrics
from quart_iot.models import MqttState
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, Written

log = logging.getLogger(__name__)

STATUSES = ("published", "merged", "dropped", "failed")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
FLUSH_SECONDS = 5.0
PUBLISH_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0  # CONNACK and DISCONNECT waits; also bounds the stop
KEEPALIVE = 30
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0


@dataclass(frozen=True, slots=True)
class Broker:
    """Where to publish, from MQTT_URL and the MQTT_* settings."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Broker | None":
        if not settings.mqtt_url:
            return None
        url = urlsplit(settings.mqtt_url)  # the settings already checked scheme, host and port
        # MQTT_USERNAME / MQTT_PASSWORD, when set, win over credentials in the URL.
        username = settings.mqtt_username or (unquote(url.username) if url.username else None)
        password = settings.mqtt_password or (unquote(url.password) if url.password else None)
        port = url.port or DEFAULT_PORTS[url.scheme]
        return cls(url.hostname or "", port, url.scheme == "mqtts", username, password)

    def client(self, tls_context: ssl.SSLContext | None) -> aiomqtt.Client:
        """A fresh client: nothing a previous connection left in paho's queues is resent."""
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=f"quart_iot-{secrets.token_hex(6)}",  # unique, within MQTT 3.1.1's 23
            tls_context=tls_context,
            keepalive=KEEPALIVE,
            timeout=CONNECT_TIMEOUT,
        )


class Notifications:
    """Extension: publish a change notification to MQTT after each successful save."""

    def __init__(self, settings: Settings, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.broker = Broker.from_settings(settings)
        self.topic = settings.mqtt_topic
        self.queue_size = settings.mqtt_queue_size
        self.flush_seconds = flush_seconds
        self.connected = False
        self._pending: dict[str, None] = {}  # MACs in order: an ordered set
        self.in_flight: str | None = None  # taken from the pending set, not yet acknowledged
        self._wake = asyncio.Event()  # something was queued
        self._empty = asyncio.Event()  # the queue is empty (the flush waits for it)
        self._runner: asyncio.Task[None] | None = None

    @property
    def state(self) -> MqttState:
        if self.broker is None:
            return "disabled"
        return "connected" if self.connected else "disconnected"

    @property
    def queued(self) -> int:
        return len(self._pending) + (self.in_flight is not None)

    def init_app(self, app: Quart) -> None:
        app.extensions["notifications"] = self
        if self.broker is None:
            return
        self._register_metrics(Metrics.of(app))
        ConfigStore.of(app).write_listeners.append(self._written)
        app.before_serving(self._start)
        app.after_serving(self._stop)

    def _register_metrics(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.publishes = Counter(
            "iot_mqtt_publish_total",
            "Change notifications by outcome: published (acknowledged), merged (one for that "
            "file was already waiting), dropped (queue full), failed (publish attempt failed; "
            "the message stays queued and is retried).",
            registry=r,
        )
        self.connected_gauge = Gauge(
            "iot_mqtt_connected", "1 while connected to the MQTT broker, else 0.", registry=r
        )
        self.queued_gauge = Gauge(
            "iot_mqtt_queued",
            "Change notifications waiting to be published (one per device at most, besides "
            "one being published).",
            registry=r,
        )
        for status in STATUSES:
            self.publishes.set({"status": status}, 0)
        self.connected_gauge.set({}, 0)
        self.queued_gauge.set({}, 0)

    def _written(self, written: Written) -> None:
        # A save whose bytes were unchanged is notified too: as before, every successful PUT.
        if written.saved_document:
            self.enqueue(written.mac)

    def enqueue(self, mac: str) -> None:
        """Queue the notification for a saved document; never blocks, drops when full."""
        if mac in self._pending:
            # Not yet sent: it will tell the device to fetch the file, which is now this save.
            self.publishes.inc({"status": "merged"})
            return
        if self.queued >= self.queue_size:
            self.publishes.inc({"status": "dropped"})
            log.warning("MQTT queue full (%d): notification for %s dropped", self.queue_size, mac)
            return
        self._pending[mac] = None
        self._queue_resized()

    def _queue_resized(self) -> None:
        self.queued_gauge.set({}, self.queued)
        if self.queued:
            self._empty.clear()
            self._wake.set()
        else:
            self._empty.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._queue_resized()
        self._runner = asyncio.create_task(self._run_forever())

    async def _stop(self) -> None:
        """Flush what is queued for a bounded time, then disconnect."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), self.flush_seconds)
        if self.queued:
            log.warning("stopping with %d MQTT notification(s) not sent", self.queued)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def _run_forever(self) -> None:
        assert self.broker is not None
        # Loading the system trust store reads files: once, and off the event loop.
        tls = (
            await anyio.to_thread.run_sync(ssl.create_default_context) if self.broker.tls else None
        )
        delay = BACKOFF_FIRST
        while True:
            try:
                async with self.broker.client(tls) as client:
                    self._set_connected(True)
                    delay = BACKOFF_FIRST
                    await self._session(client)
            except* aiomqtt.MqttError as group:
                self._connection_lost(group.exceptions[0], delay)
            except* Exception:
                log.exception("MQTT publisher failed; reconnecting")
            finally:
                self._set_connected(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _set_connected(self, connected: bool) -> None:
        if connected and not self.connected:
            assert self.broker is not None
            log.info("connected to MQTT broker %s:%d", self.broker.host, self.broker.port)
        self.connected = connected
        self.connected_gauge.set({}, int(connected))

    def _connection_lost(self, error: BaseException, delay: float) -> None:
        # One warning when the broker goes away, not one per retry while it stays away.
        level = logging.WARNING if self.connected or delay == BACKOFF_FIRST else logging.DEBUG
        log.log(level, "MQTT broker unavailable (%s); %d queued, retrying", error, self.queued)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Publish until the connection drops (the watcher notices it even while idle)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(client))
            tasks.create_task(self._drain(client))

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # Nothing is subscribed: the iterator only ends by raising when the connection drops.
        async for _ in client.messages:
            pass

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Out of the pending set while in flight: a save made now may have missed this
            # message's delivery, so it must queue a message of its own, not merge into this.
            self.in_flight = mac = next(iter(self._pending))
            del self._pending[mac]
            try:
                await client.publish(self.topic, payload(mac), qos=1, timeout=PUBLISH_TIMEOUT)
            except (aiomqtt.MqttError, asyncio.CancelledError):
                self._pending = {mac: None, **self._pending}  # first again, never forgotten
                self.publishes.inc({"status": "failed"})
                raise
            finally:
                self.in_flight = None
            self.publishes.inc({"status": "published"})  # acknowledged (PUBACK)
            self._queue_resized()


def payload(mac: str) -> bytes:
    """The notification: the name of the file that changed."""
    return json.dumps({"filename": f"{mac}.json"}).encode()


def mqtt_state() -> MqttState:
    """The MQTT state of the running app, for the health probe."""
    notifications = current_app.extensions.get("notifications")
    return notifications.state if isinstance(notifications, Notifications) else "disabled"
