"""Metrics extension: a registry per app, request hooks, and GET /metrics."""

import time
from importlib.metadata import version

import anyio.to_thread
from aioprometheus.collectors import Collector, Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render
from quart import Quart, Response, current_app, g, request
from quart_schema import hide
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from quart_iot import storagetime
from quart_iot.errors import StorageUnavailable
from quart_iot.procstats import read_process_stats
from quart_iot.store import StorageStats, current_store

CONFIG_BLUEPRINTS = frozenset({"configs", "history", "models", "changes"})
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Every label has a fixed set of values: any other method a client invents is "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route of a 404: no route template matched the path


class Metrics:
    """Extension: HTTP metrics by route template, config operation metrics, storage gauges."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total", "HTTP requests by method, route template and status.", registry=r
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to produce a response, by method and route template.",
            registry=r,
            buckets=_BUCKETS,
        )
        self.operations = Counter(
            "iot_config_operations_total", "Config operations by operation and status.", registry=r
        )
        self.operation_duration = Histogram(
            "iot_config_operation_duration_seconds",
            "Time a config operation spent on storage work, in worker threads.",
            registry=r,
            buckets=_BUCKETS,
        )
        self.files = Gauge(
            "iot_config_files",
            "Usable config documents in the directory; absent while it cannot be read.",
            registry=r,
        )
        self.writes_blocked = Gauge(
            "iot_config_writes_blocked",
            "1 while writes time out waiting for the directory's write lock, else 0.",
            registry=r,
        )
        self.storage_up = Gauge(
            "iot_config_storage_available",
            "1 when the configs directory can be used, else 0.",
            registry=r,
        )
        self.history_versions = Gauge(
            "iot_config_history_versions",
            "Versions kept in the history, as of the last survey (every minute).",
            registry=r,
        )
        self.history_bytes = Gauge(
            "iot_config_history_bytes",
            "Bytes of the distinct files the history keeps, as of the last survey.",
            registry=r,
        )
        self.history_pruned = Counter(
            "iot_config_history_pruned_total",
            "Versions removed by retention in this process.",
            registry=r,
        )
        Gauge("iot_build_info", "Always 1; the version of quart_iot serving.", registry=r).set(
            {"version": version("quart-iot")}, 1
        )
        self._process = ProcessMetrics(r)

    def init_app(self, app: Quart) -> None:
        app.extensions["metrics"] = self
        app.before_request(self._start_timer)
        app.after_request(self._record)
        app.add_url_rule("/metrics", "metrics", self.scrape, methods=["GET"])

    @classmethod
    def of(cls, app: Quart) -> "Metrics":
        """The app's Metrics (other extensions register their series in its registry)."""
        metrics = app.extensions["metrics"]
        assert isinstance(metrics, cls)
        return metrics

    async def _start_timer(self) -> None:
        g.metrics_started = time.perf_counter()
        storagetime.start()

    async def _record(self, response: Response) -> Response:
        started = g.get("metrics_started")
        if started is None:  # failed before the hooks ran
            return response
        elapsed = time.perf_counter() - started
        method = request.method if request.method in METHODS else "other"
        route = route_label()
        status = str(response.status_code)
        self.http_requests.inc({"method": method, "route": route, "status": status})
        self.http_duration.observe({"method": method, "route": route}, elapsed)
        if request.blueprint in CONFIG_BLUEPRINTS and request.endpoint:
            operation = request.endpoint.rsplit(".", 1)[-1]
            outcome = str(g.get("error_code", "success")).lower()
            self.operations.inc({"operation": operation, "status": outcome})
            if (storage_seconds := storagetime.spent()) is not None:
                self.operation_duration.observe({"operation": operation}, storage_seconds)
        return response

    @hide
    async def scrape(self) -> Response:
        """Prometheus text format; the file gauges are read from the directory now."""
        store = current_store()
        stats = store.stats()
        self.writes_blocked.set({}, int(stats.writes_blocked))
        try:
            count = await store.count()
        except StorageUnavailable:
            drop_sample(self.files, {})  # unknown: no sample, rather than a stale one
            self.storage_up.set({}, 0)
        else:
            self.files.set({}, count)
            self.storage_up.set({}, 1)
        self._history(stats)
        await self._process.update()
        body, headers = render(self.registry, request.headers.getlist("Accept"))
        return Response(body + b"\n", status=200, headers=headers)

    def _history(self, stats: StorageStats) -> None:
        if stats.versions_kept is not None and stats.history_bytes is not None:
            self.history_versions.set({}, stats.versions_kept)
            self.history_bytes.set({}, stats.history_bytes)
        self.history_pruned.set({}, stats.pruned)


def drop_sample(collector: Collector, labels: dict[str, str]) -> None:
    """Remove one sample from a collector, so that a scrape shows none rather than a stale one.

    aioprometheus has no public way to (a collector can only set values), so this pops from
    `Collector.values`, its internal MetricDict; tests/test_server_dependencies.py fails if
    that changes. Upstream feature that would remove it: a `Collector.remove(labels)`, as
    prometheus_client's `remove`.
    """
    collector.values.pop(labels, None)


def route_label() -> str:
    """The route template the request matched; for a 405, the one its path matched."""
    if request.url_rule is not None:
        return request.url_rule.rule
    error = request.routing_exception
    if not isinstance(error, MethodNotAllowed) or not error.valid_methods:
        return UNMATCHED
    adapter = current_app.create_url_adapter(request)
    assert adapter is not None  # always, for a request
    try:
        rule, _ = adapter.match(method=next(iter(error.valid_methods)), return_rule=True)
    except HTTPException:
        return UNMATCHED
    return str(rule.rule)


class ProcessMetrics:
    """The conventional process_* series, refreshed at each scrape."""

    def __init__(self, registry: Registry) -> None:
        r = registry
        self.resident = Gauge("process_resident_memory_bytes", "Resident memory.", registry=r)
        self.virtual = Gauge("process_virtual_memory_bytes", "Virtual memory.", registry=r)
        self.cpu = Counter("process_cpu_seconds_total", "User and system CPU time.", registry=r)
        self.start = Gauge(
            "process_start_time_seconds", "Start time, seconds since the epoch.", registry=r
        )
        self.open_fds = Gauge("process_open_fds", "Open file descriptors.", registry=r)
        self.max_fds = Gauge("process_max_fds", "Maximum open file descriptors.", registry=r)

    async def update(self) -> None:
        stats = await anyio.to_thread.run_sync(read_process_stats)
        if stats is None:  # not Linux: no process series
            return
        self.resident.set({}, stats.resident_memory_bytes)
        self.virtual.set({}, stats.virtual_memory_bytes)
        self.cpu.set({}, stats.cpu_seconds)
        self.start.set({}, stats.start_time_seconds)
        self.open_fds.set({}, stats.open_fds)
        self.max_fds.set({}, stats.max_fds)
