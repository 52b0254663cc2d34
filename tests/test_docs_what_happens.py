"""The docs say what happens (issue 17, item 21): each claim checked against the code."""

import re
from pathlib import Path

import pytest
from quart import Quart

from quart_iot.app import create_app
from quart_iot.settings import Settings
from tests.conftest import Client

ROOT = Path(__file__).resolve().parent.parent
MIGRATING = ROOT / "docs" / "MIGRATING_FROM_FLASK.md"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
README = ROOT / "README.md"
API = ROOT / "docs" / "API.md"


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def section(path: Path, heading: str) -> str:
    """The text of the section whose heading starts with `heading`, up to the next one."""
    match = re.search(
        rf"^(#+) {re.escape(heading)}.*?$(.*?)(?=^#{{1,2}} |\Z)", text(path), re.M | re.S
    )
    assert match is not None, f"{path.name}: no section {heading!r}"
    return match[2]


async def test_the_421_body_says_which_setting_to_change(client: Client) -> None:
    response = await client.get("/api/configs", headers={"Host": "configs.example.org:3201"})
    body = await response.get_json()
    assert response.status_code == 421
    assert "ALLOWED_HOSTS" in body["error"]
    assert body["details"] == {"host": "configs.example.org", "setting": "ALLOWED_HOSTS"}


async def test_the_migration_guide_gives_the_line_that_lets_a_dns_name_in(
    configs_dir: Path,
) -> None:
    clients = section(MIGRATING, "What stays the same for API clients")
    assert "421" in clients
    (line,) = re.findall(r"^ALLOWED_HOSTS='(.*)'$", clients, re.M)
    settings = Settings(esp32_configs_dir=configs_dir, allowed_hosts=line, _env_file=None)
    app: Quart = create_app(settings)
    async with app.test_app():
        for name in settings.allowed_hosts:
            response = await app.test_client().get("/api/health", headers={"Host": name})
            assert response.status_code == 200, name
        refused = await app.test_client().get("/api/health", headers={"Host": "other.example"})
        assert refused.status_code == 421


def test_the_backup_section_keeps_the_history() -> None:
    backups = section(OPERATIONS, "Backups")
    assert ".history" in backups
    assert "nothing else in it matters" not in backups


# Request headers a browser app could ask to send: the code must allow those the doc names.
CANDIDATE_HEADERS = [
    "Accept", "Accept-Language", "Authorization", "Cache-Control", "Content-Type", "Cookie",
    "If-Match", "If-Modified-Since", "If-None-Match", "Last-Event-ID", "Prefer", "Range",
    "X-Requested-With", "X-Request-ID",
]  # fmt: skip


def cors_paragraph() -> str:
    (paragraph,) = re.findall(r"- \*\*CORS\.\*\*(.*?)(?=^- \*\*|^#)", text(OPERATIONS), re.M | re.S)
    return " ".join(paragraph.split())


def named(clause: str) -> set[str]:
    return {name.lower() for name in re.findall(r"`([A-Za-z][\w-]+)`", clause)}


async def test_the_cors_paragraph_names_what_the_code_allows(configs_dir: Path) -> None:
    origin = "https://app.example"
    settings = Settings(esp32_configs_dir=configs_dir, cors_origins=f'["{origin}"]', _env_file=None)
    app = create_app(settings)
    async with app.test_app():
        preflight = await app.test_client().options(
            "/api/configs",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": ", ".join(CANDIDATE_HEADERS),
            },
        )
        answer = await app.test_client().get("/api/health", headers={"Origin": origin})
    paragraph = cors_paragraph()
    methods = set(re.findall(r"\b(GET|PUT|DELETE|POST|PATCH|HEAD|OPTIONS)\b", paragraph))
    allowed = preflight.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")
    assert methods == set(allowed)
    (requested,) = re.findall(r"allowed request headers(.*?);", paragraph)
    allowed = preflight.headers["Access-Control-Allow-Headers"].replace(" ", "").split(",")
    assert named(requested) == {name.lower() for name in allowed}
    (exposed,) = re.findall(r";([^;]*) are exposed", paragraph)
    sent = answer.headers["Access-Control-Expose-Headers"].replace(" ", "").split(",")
    assert named(exposed) == {name.lower() for name in sent}


def test_the_table_of_contents_lists_every_section() -> None:
    doc = text(OPERATIONS)
    headings = re.findall(r"^## (.+)$", re.sub(r"^```.*?^```", "", doc, flags=re.M | re.S), re.M)
    listed = re.findall(r"^- \[(.+?)\]\(#", doc, re.M)
    missing = [heading for heading in headings if heading not in listed]
    assert missing == [], "docs/OPERATIONS.md: add these sections to the table of contents"
    assert listed == headings, "docs/OPERATIONS.md: the table of contents is out of order"


def test_operations_md_does_not_say_one_worker_and_then_document_workers() -> None:
    processes = section(OPERATIONS, "Processes, replicas and the shared directory")
    assert "**one worker**" not in processes
    assert "WORKERS" in processes


@pytest.mark.parametrize(
    "doc", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_no_doc_points_outside_the_repository(doc: Path) -> None:
    outside = re.findall(r"`(\.\./[^`]+)`|\]\((\.\./\.\./[^)]+)\)", text(doc))
    assert outside == [], f"{doc.name} names files the repository does not have"


def test_the_readme_names_what_the_test_command_needs_beyond_python() -> None:
    install = section(README, "Two commands")
    run = text(ROOT / ".ci" / "run")
    packages = set(re.findall(r"need\+=\(([\w.-]+)\)", run))
    named = set(re.findall(r"`([\w.-]+)`", install))
    assert packages <= named, f"README does not name: {sorted(packages - named)}"
