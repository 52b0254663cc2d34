"""docs/observability: the dashboard and the alert rules use only metrics the service exposes."""

import json
import re
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from quart import Quart

from tests.conftest import MAC, OTHER_MAC, Client, Outside
from tests.server import free_port
from tests.tools import find, needs

OBSERVABILITY = Path(__file__).resolve().parent.parent / "docs" / "observability"
DASHBOARD = OBSERVABILITY / "quart-iot-dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yml"
ALERT_TESTS = OBSERVABILITY / "alerts.test.yml"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"

PROMTOOL = find("promtool")
needs_promtool = needs("promtool", "Debian package prometheus")

SCRAPE_SERIES = {"up"}  # written by Prometheus for each scrape, not by the service
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
REQUIRED_ALERTS = {
    "QuartIotDown",
    "QuartIotNotReady",
    "QuartIotHighErrorRate",
    "QuartIotSlowRequests",
    "QuartIotMqttDisconnected",
}
# Grafana's variables, replaced by values Prometheus can parse.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": "quart-iot", "$instance": ".*"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
# A whole identifier that is not a function call, and not the tail of a number like 1e3.
_NAME = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_SAMPLE = re.compile(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s")
_LABEL_VALUE_QUERY = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _VARIABLE.sub("", _STRING.sub('""', expr))
    text = _GROUPING.sub("", _RANGE.sub("", _BRACES.sub("", text)))
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched in its braces) for each selector with braces."""
    return [(m[1], set(_MATCHER_LABEL.findall(m[2]))) for m in _SELECTOR.finditer(expr)]


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for m in _GROUPING.finditer(expr)
        for label in m[2].split(",")
        if label.strip()
    }


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in walk_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def variable_queries() -> list[str]:
    return [v["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def used_exprs() -> list[str]:
    return dashboard_exprs() + [rule["expr"] for rule in rules()]


class Exposition:
    """What one /metrics response offers: series names, their labels, declared types."""

    def __init__(self, text: str) -> None:
        self.labels: dict[str, set[str]] = {}
        self.types: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(maxsplit=3)
                self.types[name] = kind
            elif line.startswith("# HELP "):
                self.types.setdefault(line.split()[2], "")
            elif line and not line.startswith("#") and (match := _SAMPLE.match(line)):
                labels = set(re.findall(r'(\w+)="', match[2] or ""))
                self.labels.setdefault(match[1], set()).update(labels)

    def has(self, name: str) -> bool:
        """A series exists, or (no samples rendered yet) its metric is declared."""
        if name in self.labels or name in SCRAPE_SERIES:
            return True
        if self.types.get(name) not in (None, "histogram"):  # a histogram's own name is no series
            return True
        base, _, suffix = name.rpartition("_")
        return suffix in ("bucket", "sum", "count") and self.types.get(base) == "histogram"

    def problems(self, expr: str) -> list[str]:
        """Unknown metrics, and labels no metric of the expression carries."""
        names = metric_names(expr)
        found = [f"unknown metric {name}" for name in sorted(names) if not self.has(name)]
        for name, labels in selector_labels(expr):
            known = self.labels.get(name, set()) | TARGET_LABELS
            found += [f"{name} has no label {label}" for label in sorted(labels - known)]
        known = TARGET_LABELS.union(*(self.labels.get(name, set()) for name in names))
        found += [f"no metric has label {label}" for label in grouping_labels(expr) - known]
        return found


async def exercise(client: Client, outside: Outside) -> Exposition:
    """A few requests of every kind, then one scrape."""
    await outside.put(MAC, {"deviceName": "Porch"})
    for path in (
        "/api/configs",
        f"/api/configs/{MAC}",
        f"/api/configs/{MAC}.json",
        f"/api/configs/{OTHER_MAC}",
        "/api/health",
        "/api/health/live",
        "/nowhere",
    ):
        await client.get(path)
    await client.delete(f"/api/configs/{MAC}")
    response = await client.get("/metrics")
    assert response.status_code == 200
    return Exposition(await response.get_data(as_text=True))


def is_mqtt(expr: str) -> bool:
    return any(name.startswith("iot_mqtt_") for name in metric_names(expr))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (route) (rate(http_requests_total{route=~"/a.*"}[5m]))', {"http_requests_total"}),
        (
            'histogram_quantile(0.95, sum by (le) (rate(x_bucket{job=~"$job"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        ("a / on (instance) group_left(job) b offset 1h > 1e3", {"a", "b"}),
        ("absent(up{job='q'}) or vector(0)", {"up"}),
        ("increase(c_total[10m]) > 0 unless d", {"c_total", "d"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


async def test_dashboard_and_rules_use_only_exposed_metrics(
    client: Client, outside: Outside
) -> None:
    exposition = await exercise(client, outside)
    exprs = [e for e in used_exprs() if not is_mqtt(e)]
    assert len(exprs) > 20
    assert {e: problems for e in exprs if (problems := exposition.problems(e))} == {}


async def test_variable_queries_use_exposed_metrics(client: Client, outside: Outside) -> None:
    exposition = await exercise(client, outside)
    for query in variable_queries():
        match = _LABEL_VALUE_QUERY.match(query)
        assert match, query
        assert exposition.has(match[1]), query


async def test_mqtt_series_exist_only_when_mqtt_is_set(client: Client, outside: Outside) -> None:
    exposition = await exercise(client, outside)
    assert not any(name.startswith("iot_mqtt_") for name in exposition.labels | exposition.types)
    assert any(is_mqtt(rule["expr"]) for rule in rules())


@pytest.fixture
async def mqtt_app(serving: Callable[..., Awaitable[Quart]]) -> Quart:
    # Nothing listens on the port: the publisher retries in the background, as with a broker down.
    return await serving(mqtt_url=f"mqtt://127.0.0.1:{free_port()}")


async def test_mqtt_panels_and_rules_use_exposed_metrics(mqtt_app: Quart, outside: Outside) -> None:
    exposition = await exercise(mqtt_app.test_client(), outside)
    exprs = [e for e in used_exprs() if is_mqtt(e)]
    assert len(exprs) >= 4
    assert {e: problems for e in exprs if (problems := exposition.problems(e))} == {}
    assert exposition.labels["iot_mqtt_publish_total"] == {"status"}


def test_rules_have_the_expected_shape() -> None:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert set(data) == {"groups"}
    names = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules"}, group
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert isinstance(rule["expr"], str), rule["alert"]
            assert rule["expr"].strip(), rule["alert"]
            assert re.fullmatch(r"(\d+[smhd])+", rule.get("for", "0s")), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS


def test_every_alert_has_a_unit_test() -> None:
    cases = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    firing = {
        check["alertname"]
        for case in cases["tests"]
        for check in case["alert_rule_test"]
        if check["exp_alerts"]
    }
    assert {rule["alert"] for rule in rules()} == firing


def test_dashboard_has_the_expected_shape() -> None:
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert data["uid"]
    assert data["title"]
    assert data["id"] is None  # a new dashboard on import, not an overwrite of another
    panels = list(walk_panels(data["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    promtool("check", "rules", ALERTS.name)


@needs_promtool
def test_alerts_fire_as_their_unit_tests_say() -> None:
    promtool("test", "rules", ALERT_TESTS.name)


@needs_promtool
def test_example_prometheus_config_is_valid() -> None:
    promtool("check", "config", PROMETHEUS_CONFIG.name)


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = []
    for expr in dashboard_exprs():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        exprs.append(expr)
    records = [{"record": f"dashboard:query{n}", "expr": e} for n, e in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    promtool("check", "rules", str(path), cwd=tmp_path)
