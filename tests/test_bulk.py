"""The pure parts of a bulk change: merge patch, plans, the journal, recovery, revert, models."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from quart_iot.bulk import (
    Journal,
    complete,
    new_change_id,
    plan_change,
    plan_device,
    plan_revert,
    recover,
    start_journal,
)
from quart_iot.documents import Document, dump_document, etag_of
from quart_iot.models import ChangeRecord, ChangeRequest, ChangeResult, ChangeSummary
from quart_iot.patch import merge_patch
from quart_iot.rql import Filter
from tests.rql_cases import DOCUMENTS

# RFC 7396, Appendix A: (original, patch, result)
RFC7396_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    (  # RFC 7396, section 3
        {
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged",
        },
        {
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": None},
            "tags": ["example"],
        },
        {
            "title": "Hello!",
            "author": {"givenName": "John"},
            "tags": ["example"],
            "content": "This will be unchanged",
            "phoneNumber": "+01-123-456-7890",
        },
    ),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7396_EXAMPLES)
def test_merge_patch_rfc7396_examples(original: Any, patch: Any, result: Any) -> None:
    before = json.dumps(original)
    assert merge_patch(original, patch) == result
    assert json.dumps(original) == before  # the original is left as it was


def _device(content: Document) -> tuple[Document, str]:
    return content, etag_of(dump_document(content))


def test_a_plan_is_the_patched_document_its_etag_and_its_diff() -> None:
    content = {"deviceName": "Relay", "mqtt": {"host": "old.lan", "port": 1883}, "x": 1}
    _, etag = _device(content)
    patch = {"mqtt": {"host": "broker.lan", "user": "relay"}, "x": None}
    plan = plan_device("aa-00-00-00-00-01", content, etag, merge_patch(content, patch))
    assert plan.changes
    assert plan.etag_before == etag
    assert plan.after == {
        "deviceName": "Relay",
        "mqtt": {"host": "broker.lan", "port": 1883, "user": "relay"},
    }
    assert plan.stored_after == dump_document(plan.after)
    assert plan.etag_after == etag_of(plan.stored_after) != etag
    assert plan.diff == [
        {"op": "remove", "path": "/x"},
        {"op": "replace", "path": "/mqtt/host", "value": "broker.lan"},
        {"op": "add", "path": "/mqtt/user", "value": "relay"},
    ]
    assert content == {"deviceName": "Relay", "mqtt": {"host": "old.lan", "port": 1883}, "x": 1}


@pytest.mark.parametrize(
    "patch",
    [{}, {"missing": None}, {"mqtt": {"host": "broker.lan"}}, {"mqtt": {}}, {"a": [1, {"b": 2}]}],
)
def test_a_patch_that_changes_nothing_plans_no_write(patch: Document) -> None:
    content = {"mqtt": {"host": "broker.lan"}, "a": [1, {"b": 2}]}
    # stored pretty-printed by another tool: other bytes, the same document
    etag = etag_of(json.dumps(content, indent=2).encode())
    plan = plan_device("aa-00-00-00-00-01", content, etag, merge_patch(content, patch))
    assert not plan.changes
    assert plan.diff == []


def test_a_number_that_becomes_a_float_is_a_change() -> None:
    content = {"port": 1883}
    plan = plan_device("m", content, "e", merge_patch(content, {"port": 1883.0}))
    assert plan.changes
    assert plan.diff == [{"op": "replace", "path": "/port", "value": 1883.0}]


def test_plan_change_over_the_devices_a_filter_selects() -> None:
    selected = Filter('eq(deviceModel,"relay_board")').select(DOCUMENTS.items())
    devices = [(mac, *_device(DOCUMENTS[mac])) for mac in selected]
    plans = plan_change(devices, {"mqtt": {"host": "broker.lan"}})
    assert [plan.mac for plan in plans] == selected
    assert len(plans) > 5
    changed = {plan.mac for plan in plans if plan.changes}
    assert changed == set(selected) - {"aa-00-00-00-00-01"}  # already on broker.lan
    assert all(plan.after["mqtt"]["host"] == "broker.lan" for plan in plans)


# -- the journal, an interrupted change, a revert ----------------------------------------------


class Fleet:
    """A store's documents by MAC, written only with If-Match, as a bulk change writes."""

    def __init__(self, documents: dict[str, Document]) -> None:
        self.documents = {mac: dump_document(content) for mac, content in documents.items()}

    def read(self, mac: str) -> tuple[Document, str]:
        raw = self.documents[mac]
        return json.loads(raw), etag_of(raw)

    def etags(self) -> dict[str, str | None]:
        return {mac: etag_of(raw) for mac, raw in self.documents.items()}

    def write(self, mac: str, stored: bytes, if_match: str) -> bool:
        if etag_of(self.documents[mac]) != if_match:
            return False
        self.documents[mac] = stored
        return True


def _fleet(count: int) -> Fleet:
    return Fleet({f"aa-00-00-00-{n // 256:02x}-{n % 256:02x}": _content(n) for n in range(count)})


def _content(n: int) -> Document:
    return {"deviceName": f"relay {n}", "mqtt": {"host": "old.lan" if n % 10 else "broker.lan"}}


def _start(fleet: Fleet, patch: Document) -> tuple[Journal, list[Any]]:
    devices = [(mac, *fleet.read(mac)) for mac in sorted(fleet.documents)]
    plans = plan_change(devices, patch)
    journal = start_journal(
        new_change_id(),
        plans,
        subject="sub:alice",
        comment="new broker",
        filter_text='like(deviceName,"relay*")',
        patch=patch,
    )
    return journal, plans


def test_an_interrupted_change_leaves_each_device_old_or_new_and_its_journal_says_which() -> None:
    fleet = _fleet(200)
    journal, plans = _start(fleet, {"mqtt": {"host": "broker.lan"}})
    kept = Journal.model_validate_json(journal.model_dump_json())  # as a store keeps it
    assert kept == journal
    assert kept.state == "running"
    assert sum(entry.status == "unchanged" for entry in kept.devices) == 20
    before = dict(fleet.documents)
    meddled = {plans[7].mac, plans[151].mac}  # another writer, meanwhile
    for mac in meddled:
        fleet.documents[mac] = dump_document({"deviceName": "someone else's"})
    for plan in plans[:120]:  # ... and then SIGKILL
        if plan.changes:
            fleet.write(plan.mac, plan.stored_after, plan.etag_before)
    recovered = recover(kept, fleet.etags())
    assert recovered.state == "interrupted"
    for index, plan in enumerate(plans):
        entry = recovered.entry(plan.mac)
        raw = fleet.documents[plan.mac]
        if plan.mac in meddled:
            assert entry.status == "conflict"
            assert entry.etag == etag_of(raw)
        elif not plan.changes:
            assert entry.status == "unchanged"
            assert raw == before[plan.mac]
        elif index < 120:
            assert entry.status == "changed"
            assert raw == plan.stored_after
        else:
            assert entry.status == "not_applied"
            assert raw == before[plan.mac]
    counts = ChangeSummary.from_journal(recovered).counts
    assert counts == {"unchanged": 20, "changed": 107, "conflict": 2, "not_applied": 71}


def test_a_completed_change_and_its_revert_after_later_edits() -> None:
    fleet = _fleet(200)
    original = dict(fleet.documents)
    journal, plans = _start(fleet, {"mqtt": {"host": "broker.lan"}, "enableOTA": True})
    for plan, entry in zip(plans, journal.devices, strict=True):
        if entry.status is None:
            written = fleet.write(plan.mac, plan.stored_after, plan.etag_before)
            entry.status, entry.etag = "changed", plan.etag_after
            assert written
    done = complete(journal)
    assert done.state == "completed"
    assert done.completed_at is not None
    edited = sorted(fleet.documents)[3:30:3]  # edited by hand after the change
    for mac in edited:
        content, _ = fleet.read(mac)
        fleet.documents[mac] = dump_document({**content, "enableOTA": False})
    del fleet.documents[sorted(fleet.documents)[199]]

    current = {mac: fleet.read(mac) for mac in fleet.documents}
    reverts, conflicts = plan_revert(done, current)
    assert sorted(conflicts) == sorted([*edited, "aa-00-00-00-00-c7"])
    assert len(reverts) == 200 - len(conflicts)
    for plan in reverts:
        assert fleet.write(plan.mac, plan.stored_after, plan.etag_before)
    for mac, raw in fleet.documents.items():
        if mac not in edited:
            assert raw == original[mac]  # back to the version before the change, byte for byte
        else:
            assert json.loads(raw)["enableOTA"] is False  # the later edit is kept

    revert = start_journal(
        new_change_id(),
        reverts,
        subject="sub:bob",
        comment=None,
        filter_text=done.filter,
        patch=None,
        revert_of=done.change_id,
    )
    assert revert.revert_of == done.change_id
    assert revert.patch is None


def test_a_change_completes_only_when_every_device_is_decided() -> None:
    journal, _ = _start(_fleet(3), {"mqtt": {"host": "new.lan"}})
    with pytest.raises(ValueError, match="every device is decided"):
        complete(journal)


def test_change_ids_sort_by_time() -> None:
    first, second = new_change_id(1_000), new_change_id(2_000)
    assert first < second
    assert len(first) == len("1767225600000000000-0a1b2c3d")
    assert new_change_id() > second


# -- the models of the routes ------------------------------------------------------------------


def test_the_change_request() -> None:
    body = {"filter": "exists(a)", "patch": {"a": 1}, "dryRun": True, "comment": "why"}
    request = ChangeRequest.model_validate(body)
    assert request.dryRun is True
    assert ChangeRequest.model_validate({"filter": "exists(a)", "patch": {}}).dryRun is False
    wrongs: list[dict[str, Any]] = [
        {**body, "dry_run": True},
        {**body, "dryRun": "yes"},
        {**body, "patch": [1]},
        {"patch": {}},
        {**body, "comment": "x" * 1001},
    ]
    for wrong in wrongs:
        with pytest.raises(ValidationError):
            ChangeRequest.model_validate(wrong)


def test_the_record_and_the_answers_from_a_journal() -> None:
    fleet = _fleet(3)
    journal, plans = _start(fleet, {"mqtt": {"host": "broker.lan"}})
    dry = ChangeResult.dry_run(plans).model_dump(mode="json")
    assert dry["changeId"] is None
    assert dry["dryRun"] is True
    assert [d["status"] for d in dry["devices"]] == ["unchanged", "changed", "changed"]
    assert dry["devices"][1]["diff"] == [
        {"op": "replace", "path": "/mqtt/host", "value": "broker.lan"}
    ]
    assert dry["devices"][1]["etag"] == plans[1].etag_after

    running = ChangeRecord.of(journal).model_dump(mode="json")
    assert running["state"] == "running"
    assert running["completedAt"] is None
    assert [d["status"] for d in running["devices"]] == ["unchanged"]  # the others: not yet
    journal.devices[1].status, journal.devices[1].etag = "changed", plans[1].etag_after
    journal.devices[2].status, journal.devices[2].etag = "invalid", plans[2].etag_before
    journal.devices[2].violations = [{"path": "/mqtt/host", "keyword": "format", "message": "m"}]
    record = ChangeRecord.of(complete(journal)).model_dump(mode="json")
    assert record["changeId"] == journal.change_id
    assert record["state"] == "completed"
    assert record["subject"] == "sub:alice"
    assert record["filter"] == 'like(deviceName,"relay*")'
    assert record["patch"] == {"mqtt": {"host": "broker.lan"}}
    assert record["counts"] == {"unchanged": 1, "changed": 1, "invalid": 1}
    assert record["devices"][2] == {
        "mac_address": plans[2].mac,
        "status": "invalid",
        "etag": plans[2].etag_before,
        "violations": [{"path": "/mqtt/host", "keyword": "format", "message": "m"}],
        "diff": None,
    }
    fleet.write(plans[1].mac, plans[1].stored_after, plans[1].etag_before)
    reverts, conflicts = plan_revert(journal, {mac: fleet.read(mac) for mac in fleet.documents})
    assert ([plan.mac for plan in reverts], conflicts) == ([plans[1].mac], [])  # only changed
    answer = ChangeResult.of(journal).model_dump(mode="json")
    assert answer["count"] == 3
    assert answer["devices"] == record["devices"]


def test_a_result_that_breaks_its_model_is_invalid_and_never_written() -> None:
    fleet = _fleet(4)
    devices = [(mac, *fleet.read(mac)) for mac in sorted(fleet.documents)]
    plans = plan_change(devices, {"mqtt": {"host": "broker.lan", "port": "1883x"}})
    broken = [{"path": "/mqtt/port", "keyword": "type", "message": "'1883x' is not an integer"}]
    violations = {plans[1].mac: broken, plans[2].mac: broken}
    journal = start_journal(
        new_change_id(),
        plans,
        subject=None,
        comment=None,
        filter_text="exists(mqtt)",
        patch={"mqtt": {"port": "1883x"}},
        violations=violations,
    )
    assert [entry.status for entry in journal.devices] == [None, "invalid", "invalid", None]
    assert journal.devices[1].violations == broken
    assert journal.devices[1].etag == plans[1].etag_before
    dry = ChangeResult.dry_run(plans, violations).model_dump(mode="json")["devices"]
    assert [d["status"] for d in dry] == ["changed", "invalid", "invalid", "changed"]
    assert dry[1]["violations"] == broken
    assert dry[1]["etag"] == plans[1].etag_before
    assert dry[0]["etag"] == plans[0].etag_after
    assert dry[0]["violations"] is None


def test_a_patch_that_changes_nothing_is_unchanged_whatever_the_model_says() -> None:
    content = {"mqtt": {"port": "1883x"}}
    plan = plan_device("m", content, etag_of(dump_document(content)), content)
    broken = [{"path": "/mqtt/port", "keyword": "type", "message": "not an integer"}]
    journal = start_journal(
        new_change_id(),
        [plan],
        subject=None,
        comment=None,
        filter_text="exists(mqtt)",
        patch={},
        violations={"m": broken},
    )
    assert journal.devices[0].status == "unchanged"
