"""Metrics extension: a registry per app, request hooks, and GET /metrics."""

import time

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render
from quart import Quart, Response, g, request
from quart_schema import hide

from quart_iot.errors import StorageUnavailable
from quart_iot.store import current_store

CONFIG_BLUEPRINT = "configs"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
            "Time to serve a config operation.",
            registry=r,
            buckets=_BUCKETS,
        )
        self.files = Gauge(
            "iot_config_files_count", "Usable config documents in the directory.", registry=r
        )
        self.storage_up = Gauge(
            "iot_config_storage_available",
            "1 when the configs directory can be used, else 0.",
            registry=r,
        )

    def init_app(self, app: Quart) -> None:
        app.extensions["metrics"] = self
        app.before_request(self._start_timer)
        app.after_request(self._record)
        app.add_url_rule("/metrics", "metrics", self.scrape, methods=["GET"])

    async def _start_timer(self) -> None:
        g.metrics_started = time.perf_counter()

    async def _record(self, response: Response) -> Response:
        started = g.get("metrics_started")
        if started is None:  # failed before the hooks ran
            return response
        elapsed = time.perf_counter() - started
        route = request.url_rule.rule if request.url_rule else "unmatched"
        status = str(response.status_code)
        self.http_requests.inc({"method": request.method, "route": route, "status": status})
        self.http_duration.observe({"method": request.method, "route": route}, elapsed)
        if request.blueprint == CONFIG_BLUEPRINT and request.endpoint:
            operation = request.endpoint.rsplit(".", 1)[-1]
            outcome = str(g.get("error_code", "success")).lower()
            self.operations.inc({"operation": operation, "status": outcome})
            self.operation_duration.observe({"operation": operation}, elapsed)
        return response

    @hide
    async def scrape(self) -> Response:
        """Prometheus text format; the file gauges are read from the directory now."""
        try:
            self.files.set({}, await current_store().count())
            self.storage_up.set({}, 1)
        except StorageUnavailable:
            self.storage_up.set({}, 0)
        body, headers = render(self.registry, request.headers.getlist("Accept"))
        return Response(body, status=200, headers=headers)
