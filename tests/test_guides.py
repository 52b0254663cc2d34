"""docs/MIGRATING_FROM_FLASK.md and docs/OPERATIONS.md: their quotes and snippets stay true.

The Kubernetes manifests, once a snippet here, are the kit's: tests/test_deploy_kubernetes.py.
"""

import json
import os
import re
import subprocess
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from quart import Quart

from tests.conftest import MAC, OTHER_MAC, Client, Outside, write_config
from tests.server import free_port
from tests.test_observability import ALERTS, exercise

ROOT = Path(__file__).resolve().parent.parent
MIGRATING = ROOT / "docs" / "MIGRATING_FROM_FLASK.md"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_QUOTED_FROM = re.compile(r"from `([\w/.]+)`:$")
_LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
_HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)


class Block:
    """A fenced code block and the last non-blank line before it."""

    def __init__(self, doc: Path, intro: str, language: str, text: str) -> None:
        self.doc, self.intro, self.language, self.text = doc, intro, language, text


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        found.append(Block(doc, before[-1].strip() if before else "", match[1], match[2]))
    return found


def marked(name: str) -> str:
    """The block of OPERATIONS.md right after `<!-- test: name -->`."""
    named = [b.text for b in blocks(OPERATIONS) if b.intro == f"<!-- test: {name} -->"]
    assert len(named) == 1, name
    return named[0]


def quotes() -> list[tuple[str, str]]:
    """(source file, quoted text) for each block introduced by "from `file`:"."""
    return [
        (match[1], block.text)
        for block in blocks(MIGRATING)
        if (match := _QUOTED_FROM.search(block.intro))
    ]


def appears_in(chunk: list[str], lines: list[str]) -> bool:
    """The chunk is a run of consecutive lines of the file, up to a common indentation."""
    wanted = "\n".join(chunk)
    return any(
        textwrap.dedent("\n".join(lines[i : i + len(chunk)])) == wanted
        for i in range(len(lines) - len(chunk) + 1)
    )


def test_the_migration_guide_quotes_enough_code() -> None:
    assert len(quotes()) >= 15


@pytest.mark.parametrize(("source", "quote"), quotes())
def test_quoted_after_snippets_appear_in_the_source(source: str, quote: str) -> None:
    lines = (ROOT / source).read_text(encoding="utf-8").splitlines()
    chunks: list[list[str]] = [[]]
    for line in quote.splitlines():
        if line == "...":
            chunks.append([])
        else:
            chunks[-1].append(line)
    for chunk in chunks:
        chunk_text = textwrap.dedent("\n".join(chunk)).splitlines()
        assert appears_in(chunk_text, lines), f"not in {source}:\n" + "\n".join(chunk)


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings."""
    text = _FENCE.sub("", doc.read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in _HEADING.findall(text)}


@pytest.mark.parametrize("doc", [MIGRATING, OPERATIONS], ids=lambda p: p.name)
def test_relative_links_lead_to_files_and_headings(doc: Path) -> None:
    links = [
        (doc.parent / target if target else doc, anchor)
        for target, anchor in _LINK.findall(doc.read_text(encoding="utf-8"))
        if "://" not in target
    ]
    assert links
    assert [str(path) for path, _ in links if not path.exists()] == []
    broken = [f"{p.name}#{a}" for p, a in links if a and p.is_file() and a not in anchors(p)]
    assert broken == []


def test_the_kubernetes_scrape_job_is_the_one_the_alerts_expect() -> None:
    (job,) = yaml.safe_load(marked("prometheus-kubernetes"))["scrape_configs"]
    assert job["job_name"] == "quart-iot"
    assert 'job="quart-iot"' in ALERTS.read_text(encoding="utf-8")


def test_the_guide_names_every_alert_there_is() -> None:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in data["groups"] for rule in group["rules"]}
    named = set(re.findall(r"`(QuartIot\w+)`", OPERATIONS.read_text(encoding="utf-8")))
    assert named == alerts


async def test_the_metrics_table_lists_every_metric(
    serving: Callable[..., Awaitable[Quart]], outside: Outside
) -> None:
    # Nothing listens on the MQTT port: the MQTT metrics, without a broker.
    app = await serving(mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    exposition = await exercise(app.test_client(), outside)
    table = re.findall(r"^\| `(\w+)` \| (\w+) \|", OPERATIONS.read_text(encoding="utf-8"), re.M)
    assert dict(table) == exposition.types


def run_snippets(script: str, **env: str) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def test_backup_and_restore_commands(
    client: Client, configs_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    write_config(source, MAC, {"deviceName": "Porch"})
    write_config(source, OTHER_MAC, {"deviceName": "Gate"})
    (source / f".{MAC}.json.host-1-0123abcd.tmp").write_text('{"half')
    (source / ".quart_iot.lock").touch()
    (source / ".models").mkdir()
    model = {"name": "Relay", "configSchema": {"required": ["deviceName"]}}
    (source / ".models" / "relay.json").write_text(json.dumps(model))
    (source / ".models" / ".relay.json.host-1-0123abcd.tmp").write_text('{"half')
    backup = marked("backup").replace('"/backups/', f'"{tmp_path}/backups/')
    assert backup != marked("backup")
    # The restore runs into the directory the app is serving, as it would in production.
    script = f"{backup}\nexport ESP32_CONFIGS_DIR={configs_dir}\n{marked('restore')}"
    run_snippets(script, ESP32_CONFIGS_DIR=str(source))
    (saved,) = (tmp_path / "backups" / "esp32-configs").iterdir()
    expected = sorted([f"{MAC}.json", f"{OTHER_MAC}.json"])
    assert sorted(p.name for p in saved.iterdir()) == [*expected, "models"]
    assert sorted(p.name for p in configs_dir.iterdir()) == [".models", *expected]
    for name in [*expected, ".models/relay.json"]:
        assert (configs_dir / name).read_bytes() == (source / name).read_bytes()
    assert [p.name for p in (configs_dir / ".models").iterdir()] == ["relay.json"]
    body = await (await client.get("/api/configs")).get_json()
    assert body["count"] == 2
    models = await (await client.get("/api/models")).get_json()
    assert [m["code"] for m in models["models"]] == ["relay"]
    refused = await client.put(f"/api/configs/{MAC}", json={"content": {"deviceModel": "relay"}})
    assert refused.status_code == 422  # the restored model is in force
