"""Device models in PostgreSQL beyond the API tests: the migration that brings a database of
phase 1 to the list item with `device_model`, and the generated column that counts devices."""

import json
import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from quart_iot.copy import main as copy_main
from quart_iot.documents import dump_document, etag_of
from quart_iot.store.devicemodels import MODEL_IN_SUMMARY, model_named
from quart_iot.store.postgres import schema
from quart_iot.store.records import summary_json
from tests.conftest import MAC, write_config

MACS = [f"00-00-00-00-00-{index:02x}" for index in range(1, 40)]
# Contents whose list item PostgreSQL must render byte for byte as Python does.
CONTENTS: list[dict[str, Any]] = [
    {"deviceModel": "esp32", "deviceName": "Hall"},
    {},
    {"deviceModel": None},
    {"deviceModel": 5, "enableOTA": True},
    {"deviceModel": ["esp32"]},
    {"deviceModel": {"code": "esp32"}},
    {"deviceModel": 'ESP32 "quoted" \\ back/slash'},
    {"deviceModel": "ctl \x01\x1f\x7f\b\f\n\r\t end"},
    {"deviceModel": "uni é 😀 \u2028 \u2029 \ufffd"},
    {"deviceName": "x\x00y", "deviceModel": "relay"},  # a NUL elsewhere in the document
    {"deviceModel": "esp32", "nested": {"deviceModel": "other"}},
    {"deviceName": 'has ,"device_entity_id": and "device_model":"zz" inside', "deviceModel": "m"},
    {"deviceModel": "x" * 300, "deviceEntityId": "light.hall"},
]


def old_summary(mac: str, content: dict[str, Any]) -> bytes:
    """The list item as phase 1 rendered it (no device_model)."""
    rendered = json.loads(summary_json(mac, content))
    del rendered["device_model"]
    return json.dumps(rendered, ensure_ascii=False, separators=(",", ":")).encode()


async def test_the_migration_gives_every_stored_summary_its_device_model(
    pg_empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await asyncpg.connect(pg_empty_url)
    try:
        monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
        assert await schema.migrate(conn) == 2  # a database before device models
        monkeypatch.undo()
        for mac, content in zip(MACS, CONTENTS, strict=False):
            data = dump_document(content)
            await conn.execute(
                "INSERT INTO configs (mac, data, etag, summary, change_id) "
                "VALUES ($1, $2, $3, $4, 1)",
                mac, data, etag_of(data), old_summary(mac, content),
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO config_versions (mac, id, change, data, etag, summary, size) "
                "VALUES ($1, '1767225600000000000-0a1b2c3d', 'created', $2, $3, $4, 1)",
                mac, data, etag_of(data), old_summary(mac, content),
            )  # fmt: skip
        assert await schema.migrate(conn) == len(schema.MIGRATIONS)
        for table in ("configs", "config_versions"):
            rows = await conn.fetch(f"SELECT mac, summary FROM {table} ORDER BY mac")
            for row, content in zip(rows, CONTENTS, strict=True):
                assert row["summary"] == summary_json(row["mac"], content), content
        named = await conn.fetch("SELECT mac, device_model FROM configs ORDER BY mac")
        assert [row["device_model"] for row in named] == [
            model_named(summary_json(mac, content))
            for mac, content in zip(MACS, CONTENTS, strict=False)
        ]
        grouped = await conn.fetch("SELECT device_model, count(*) FROM configs GROUP BY 1")
        counts = {row[0]: row[1] for row in grouped}
        assert counts == {"esp32": 2, "relay": 1, "m": 1, None: 9}
    finally:
        await conn.close()


def test_the_generated_column_uses_the_rule_of_the_directory_store() -> None:
    # A released migration never changes: this says when the rule in the code moved from it.
    assert f"'{MODEL_IN_SUMMARY}'" in schema.MIGRATIONS[2]
    assert re.compile(MODEL_IN_SUMMARY)


def test_copy_takes_the_device_models_there_and_back(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "configs"
    (source / ".models").mkdir(parents=True)
    relay = b'{\n  "name": "Relay",\n  "configSchema": {"type": "object"}\n}\n'  # as edited by hand
    (source / ".models" / "relay.json").write_bytes(relay)
    (source / ".models" / "Bad Name.json").write_text('{"name": "x", "configSchema": null}')
    (source / ".models" / "broken.json").write_text('{"name": 1}')
    write_config(source, MAC, {"deviceModel": "relay"})
    assert copy_main(["--from", str(source), "--to", pg_url]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        "skipped .models/Bad Name.json: not named <code>.json",
        "skipped .models/broken.json: not a device model",
        "copied 1 model and 1 document; nothing unchanged; skipped 2 (not a device model: 1, "
        "not named <code>.json: 1)",
    ]
    back = tmp_path / "back"
    assert copy_main(["--from", pg_url, "--to", str(back)]) == 0
    assert (back / ".models" / "relay.json").read_bytes() == relay
    assert sorted(p.name for p in (back / ".models").iterdir()) == ["relay.json"]
    capsys.readouterr()
    assert copy_main(["--from", str(back), "--to", pg_url]) == 0  # a second run: all held
    assert capsys.readouterr().out.strip() == "nothing to copy: 1 model and 1 document unchanged"
