import copy
import json
from typing import Any

import pytest

from quart_iot.documents import MAX_DEPTH, MAX_VALUES, dump_document
from quart_iot.errors import InvalidPatch, PatchConflict, UnprocessablePatch, UnsupportedPatchType
from quart_iot.patch import (
    JSON_PATCH,
    MERGE_PATCH,
    apply_patch,
    check_patch,
    json_equal,
    json_patch,
    make_patch,
    merge_patch,
    parse_pointer,
    patch_type,
    pointer,
    reject_duplicate_members,
)

# RFC 7396 Appendix A: (original, patch, result), every example.
MERGE_EXAMPLES = [
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
]


@pytest.mark.parametrize(("original", "patch", "result"), MERGE_EXAMPLES)
def test_merge_patch_gives_every_result_of_rfc_7396(original: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy((original, patch))
    assert json.dumps(merge_patch(original, patch)) == json.dumps(result)  # key order too
    assert (original, patch) == before  # nothing changed in place


@pytest.mark.parametrize(
    ("original", "patch", "result"), [case for case in MERGE_EXAMPLES if isinstance(case[0], dict)]
)
def test_a_merge_patch_must_leave_an_object(original: Any, patch: Any, result: Any) -> None:
    if isinstance(result, dict):
        assert apply_patch(original, MERGE_PATCH, patch) == result
    else:
        with pytest.raises(UnprocessablePatch) as raised:
            apply_patch(original, MERGE_PATCH, patch)
        assert (raised.value.status, raised.value.code) == (422, "UNPROCESSABLE_PATCH")
        assert "not be a JSON object" in raised.value.message
        with pytest.raises(InvalidPatch):  # through HTTP, refused before any document is read
            check_patch(MERGE_PATCH, patch)


def op(name: str, path: str, **members: Any) -> dict[str, Any]:
    if "from_" in members:
        members["from"] = members.pop("from_")
    return {"op": name, "path": path, **members}


# RFC 6902 Appendix A: (section, document, patch, result), every example that applies.
JSON_PATCH_EXAMPLES = [
    ("A.1", {"foo": "bar"}, [op("add", "/baz", value="qux")], {"foo": "bar", "baz": "qux"}),
    (
        "A.2",
        {"foo": ["bar", "baz"]},
        [op("add", "/foo/1", value="qux")],
        {"foo": ["bar", "qux", "baz"]},
    ),
    ("A.3", {"baz": "qux", "foo": "bar"}, [op("remove", "/baz")], {"foo": "bar"}),
    ("A.4", {"foo": ["bar", "qux", "baz"]}, [op("remove", "/foo/1")], {"foo": ["bar", "baz"]}),
    (
        "A.5",
        {"baz": "qux", "foo": "bar"},
        [op("replace", "/baz", value="boo")],
        {"baz": "boo", "foo": "bar"},
    ),
    (
        "A.6",
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [op("move", "/qux/thud", from_="/foo/waldo")],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    (
        "A.7",
        {"foo": ["all", "grass", "cows", "eat"]},
        [op("move", "/foo/3", from_="/foo/1")],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    (
        "A.8",
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [op("test", "/baz", value="qux"), op("test", "/foo/1", value=2)],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    (
        "A.10",
        {"foo": "bar"},
        [op("add", "/child", value={"grandchild": {}})],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    (
        "A.11",
        {"foo": "bar"},
        [op("add", "/baz", value="qux", xyz=123)],
        {"foo": "bar", "baz": "qux"},
    ),
    ("A.14", {"/": 9, "~1": 10}, [op("test", "/~01", value=10)], {"/": 9, "~1": 10}),
    (
        "A.16",
        {"foo": ["bar"]},
        [op("add", "/foo/-", value=["abc", "def"])],
        {"foo": ["bar", ["abc", "def"]]},
    ),
]


@pytest.mark.parametrize(("section", "document", "patch", "result"), JSON_PATCH_EXAMPLES)
def test_json_patch_gives_every_result_of_rfc_6902(
    section: str, document: Any, patch: Any, result: Any
) -> None:
    before = copy.deepcopy((document, patch))
    assert json.dumps(apply_patch(document, JSON_PATCH, patch)) == json.dumps(result), section
    assert (document, patch) == before


@pytest.mark.parametrize(
    ("section", "document", "patch", "where"),
    [
        ("A.9", {"baz": "qux"}, [op("test", "/baz", value="bar")], "/baz"),
        ("A.12", {"foo": "bar"}, [op("add", "/baz/bat", value="qux")], "/baz"),
        ("A.15", {"/": 9, "~1": 10}, [op("test", "/~01", value="10")], "/~01"),
    ],
)
def test_rfc_6902_errors_are_conflicts(section: str, document: Any, patch: Any, where: str) -> None:
    with pytest.raises(PatchConflict) as raised:
        json_patch(document, patch)
    assert (raised.value.status, raised.value.code) == (409, "PATCH_CONFLICT"), section
    assert raised.value.details == {"operation": 0, "op": patch[0]["op"], "path": where}


def test_rfc_6902_a13_an_operation_with_two_ops_is_refused() -> None:
    body = b'[{"op": "add", "path": "/baz", "value": "qux", "op": "remove"}]'
    with pytest.raises(InvalidPatch, match="'op' twice"):
        reject_duplicate_members(body)
    reject_duplicate_members(b'[{"op": "add", "path": "/baz", "value": {"op": "x"}}]')


def test_a_member_twice_anywhere_in_a_json_patch_is_refused() -> None:
    with pytest.raises(InvalidPatch, match="'a' twice"):
        reject_duplicate_members(b'[{"op": "add", "path": "/x", "value": {"a": 1, "a": 2}}]')


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", ()),
        ("/", ("",)),
        ("/a~1b", ("a/b",)),
        ("/m~0n", ("m~n",)),
        ("/~01", ("~1",)),
        ("/~10", ("/0",)),
        ("/a//b", ("a", "", "b")),
        ("/ ", (" ",)),
    ],
)
def test_pointers_unescape_tilde_one_before_tilde_zero(text: str, tokens: tuple[str, ...]) -> None:
    assert parse_pointer(text) == tokens
    assert pointer(tokens) == text


@pytest.mark.parametrize("text", ["a", "a/b", "#/a", "/a~", "/a~2", "/~a", "/a~/b"])
def test_bad_pointers_are_malformed_patches(text: str) -> None:
    with pytest.raises(ValueError, match="JSON Pointer"):
        parse_pointer(text)
    with pytest.raises(InvalidPatch) as raised:
        json_patch({"a": 1}, [op("test", "/a", value=1), op("remove", text)])
    assert raised.value.details == {
        "errors": [{"loc": [1, "path"], "msg": raised.value.message, "type": "value_error"}]
    }


def test_pointer_escapes_reach_the_members_they_name() -> None:
    document = {"a/b": {"m~n": 1}, "": {"": 2}}
    patch = [
        op("replace", "/a~1b/m~0n", value=10),
        op("add", "//", value=20),
        op("copy", "/c~1d", from_="/a~1b"),
    ]
    assert json_patch(document, patch) == {"a/b": {"m~n": 10}, "": {"": 20}, "c/d": {"m~n": 10}}


LIST = {"a": [10, 20, 30]}


@pytest.mark.parametrize(
    ("patch", "result"),
    [
        ([op("add", "/a/-", value=40)], [10, 20, 30, 40]),
        ([op("add", "/a/3", value=40)], [10, 20, 30, 40]),
        ([op("add", "/a/0", value=0)], [0, 10, 20, 30]),
        ([op("remove", "/a/2")], [10, 20]),
        ([op("replace", "/a/0", value=1)], [1, 20, 30]),
        ([op("move", "/a/0", from_="/a/2")], [30, 10, 20]),
        ([op("move", "/a/-", from_="/a/0")], [20, 30, 10]),
        ([op("copy", "/a/1", from_="/a/0")], [10, 10, 20, 30]),
        ([op("test", "/a/2", value=30)], [10, 20, 30]),
    ],
)
def test_array_indexes_and_the_end(patch: Any, result: list[int]) -> None:
    assert json_patch(LIST, patch) == {"a": result}


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ([op("add", "/a/4", value=1)], "past the end"),
        ([op("remove", "/a/3")], "past the end"),
        ([op("replace", "/a/3", value=1)], "past the end"),
        ([op("test", "/a/3", value=1)], "past the end"),
        ([op("remove", "/a/-")], "not an array index"),
        ([op("replace", "/a/-", value=1)], "not an array index"),
        ([op("test", "/a/-", value=None)], "not an array index"),
        ([op("copy", "/b", from_="/a/-")], "not an array index"),
        ([op("add", "/a/01", value=1)], "not an array index"),
        ([op("remove", "/a/00")], "not an array index"),
        ([op("replace", "/a/-1", value=1)], "not an array index"),
        ([op("remove", "/a/1.0")], "not an array index"),
        ([op("remove", "/a/ 1")], "not an array index"),
        ([op("remove", "/a/1 ")], "not an array index"),
        ([op("remove", "/a/\u0661")], "not an array index"),  # an Arabic-Indic one
        ([op("remove", "/a/" + "9" * 5000)], "past the end"),
        ([op("add", "/a/99999999999", value=1)], "past the end"),
        ([op("remove", "/b")], "does not exist"),
        ([op("replace", "/b", value=1)], "does not exist"),
        ([op("move", "/c", from_="/b")], "does not exist"),
        ([op("move", "/b", from_="/b")], "does not exist"),
        ([op("add", "/b/c", value=1)], "does not exist"),
        ([op("add", "/a/0/x", value=1)], "not a container"),
        ([op("test", "/a/0/x", value=1)], "not a container"),
        ([op("replace", "", value=5), op("add", "/x", value=1)], "not a container"),
    ],
)
def test_paths_that_do_not_fit_the_document_are_conflicts(patch: Any, reason: str) -> None:
    with pytest.raises(PatchConflict, match=reason) as raised:
        json_patch(LIST, patch)
    assert raised.value.details is not None
    assert raised.value.details["operation"] == len(patch) - 1


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"op": "add", "path": "/a", "value": 1}, []),
        ("add", []),
        (None, []),
        ([["add", "/a", 1]], [0]),
        ([{"path": "/a", "value": 1}], [0, "op"]),
        ([{"op": "delete", "path": "/a"}], [0, "op"]),
        ([{"op": "ADD", "path": "/a", "value": 1}], [0, "op"]),
        ([{"op": ["add"], "path": "/a", "value": 1}], [0, "op"]),
        ([{"op": {"add": 1}, "path": "/a", "value": 1}], [0, "op"]),
        ([{"op": "add", "value": 1}], [0, "path"]),
        ([{"op": "add", "path": 5, "value": 1}], [0, "path"]),
        ([{"op": "add", "path": None, "value": 1}], [0, "path"]),
        ([{"op": "add", "path": "/a"}], [0, "value"]),
        ([{"op": "replace", "path": "/a"}], [0, "value"]),
        ([{"op": "test", "path": "/a"}], [0, "value"]),
        ([{"op": "move", "path": "/a"}], [0, "from"]),
        ([{"op": "copy", "path": "/a", "from": 1}], [0, "from"]),
        ([{"op": "copy", "path": "/a", "from": "a"}], [0, "from"]),
        # malformed after a conflict: the patch is refused as malformed, before any is tried
        ([op("test", "/a", value=2), {"op": "nope", "path": "/a"}], [1, "op"]),
    ],
)
def test_malformed_patches_are_400_before_anything_applies(patch: Any, loc: list[Any]) -> None:
    with pytest.raises(InvalidPatch) as raised:
        json_patch({"a": 1}, patch)
    assert (raised.value.status, raised.value.code) == (400, "VALIDATION_FAILED")
    assert raised.value.details is not None
    assert raised.value.details["errors"][0]["loc"] == loc


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "move", "path": "/a/b", "from": "/a"}],
        [{"op": "move", "path": "/a/b/c", "from": ""}],
        [op("test", "/a", value=2), {"op": "remove", "path": ""}],
    ],
)
def test_well_formed_patches_no_document_takes_are_422_before_anything_applies(
    patch: Any,
) -> None:
    with pytest.raises(UnprocessablePatch) as raised:
        check_patch(JSON_PATCH, patch)
    assert (raised.value.status, raised.value.code) == (422, "UNPROCESSABLE_PATCH")
    assert raised.value.details == {"operation": len(patch) - 1}
    with pytest.raises(UnprocessablePatch):
        json_patch({"a": 1}, patch)  # not a conflict with the test, though it fails


def test_null_is_a_value() -> None:
    patch = [
        op("add", "/b", value=None),
        op("test", "/b", value=None),
        op("replace", "/a", value=None),
    ]
    assert json_patch({"a": 1}, patch) == {"a": None, "b": None}


def test_moving_a_value_onto_itself_changes_nothing() -> None:
    assert json_patch({"a": {"b": 1}}, [op("move", "/a", from_="/a")]) == {"a": {"b": 1}}


def test_moving_a_member_up_replaces_its_parent() -> None:
    assert json_patch({"a": {"b": {"c": 1}}}, [op("move", "/a", from_="/a/b")]) == {"a": {"c": 1}}


def test_a_patch_is_all_or_nothing_and_changes_no_argument() -> None:
    document = {"a": {"b": [1, 2]}, "c": "d"}
    patch = [op("add", "/a/b/-", value=3), op("remove", "/c"), op("test", "/a/b/0", value=9)]
    before = copy.deepcopy((document, patch))
    with pytest.raises(PatchConflict, match="test failed"):
        json_patch(document, patch)
    assert (document, patch) == before
    assert json_patch(document, patch[:2]) == {"a": {"b": [1, 2, 3]}}
    assert (document, patch) == before


def test_members_keep_their_place_and_new_ones_come_last() -> None:
    document = {"x": 1, "y": 2, "z": 3}
    patched = json_patch(document, [op("replace", "/x", value=0), op("add", "/w", value=4)])
    assert list(patched) == ["x", "y", "z", "w"]
    assert list(json_patch(document, [op("add", "/y", value=0)])) == ["x", "y", "z"]
    assert list(merge_patch(document, {"x": 0, "w": 4, "y": None})) == ["x", "z", "w"]


def test_a_copy_is_not_shared_with_its_source() -> None:
    patch = [
        op("add", "/a/x", value=1),  # /a is now the patch's own copy
        op("copy", "/b", from_="/a"),
        op("add", "/b/y", value=2),
        op("add", "/v/-", value=3),
        op("copy", "/w", from_="/v"),
        op("add", "/w/-", value=4),
    ]
    result = json_patch({"a": {}, "v": []}, patch)
    assert result == {"a": {"x": 1}, "v": [3], "b": {"x": 1, "y": 2}, "w": [3, 4]}


def test_a_value_added_twice_is_not_shared() -> None:
    value: dict[str, Any] = {"k": []}
    patch = [
        op("add", "/a", value=value),
        op("add", "/b", value=value),
        op("add", "/a/k/-", value=1),
    ]
    assert json_patch({}, patch) == {"a": {"k": [1]}, "b": {"k": []}}
    assert value == {"k": []}


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (False, 0, False),
        (None, False, False),
        (None, None, True),
        ("1", 1, False),
        (2**60, float(2**60) + 1, True),  # a double cannot tell them apart either
        (2**53 + 1, float(2**53), False),
        ({"a": 1, "b": [1, 2]}, {"b": [1.0, 2], "a": 1}, True),
        ({"a": 1}, {"a": 1, "b": None}, False),
        ([1, 2], [2, 1], False),
        ([1, [True]], [1, [1]], False),
        ({"a": {"b": "c"}}, {"a": {"b": "c"}}, True),
        ("é", "e\u0301", False),
    ],
)
def test_test_compares_as_json_does(a: Any, b: Any, equal: bool) -> None:
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


def test_json_patch_undoes_the_history_diff() -> None:
    source = {"a": 1, "b": {"c": [1, 2, {"d": True}]}, "e/f": {"~": None}}
    target = {"b": {"c": [1, 3, {"d": 1}]}, "e/f": {"~": 0}, "g": []}
    assert json.dumps(json_patch(source, make_patch(source, target))) == json.dumps(
        {"b": {"c": [1, 3, {"d": 1}]}, "e/f": {"~": 0}, "g": []}
    )


def chain(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"c": value}
    return value


def test_nothing_deeper_than_the_documents_limit_is_built() -> None:
    document = {"c": chain(MAX_DEPTH - 1), "d": {"e": {}}}  # as deep as a document may be
    innermost = "/c" * (MAX_DEPTH - 1)
    with pytest.raises(InvalidPatch, match="deeper than 64"):
        json_patch(document, [op("copy", "/d/x", from_="/c")])
    with pytest.raises(InvalidPatch, match="deeper than 64"):
        json_patch(document, [op("move", "/d/e/x", from_="/c/c")])
    with pytest.raises(InvalidPatch, match="deeper than 64"):
        json_patch(document, [op("add", innermost + "/x", value={})])
    with pytest.raises(InvalidPatch, match="deeper than 64"):
        json_patch(document, [op("replace", innermost + "/c", value=[])])
    with pytest.raises(InvalidPatch, match="deeper than 64"):
        json_patch(document, [op("replace", "", value=chain(MAX_DEPTH + 1))])
    assert json_patch(document, [op("add", innermost + "/x", value=1)])
    assert json_patch(document, [op("move", "/d/e/x", from_="/c/c/c")])


def test_copies_of_copies_stop_at_the_value_limit() -> None:
    document = {"a": list(range(10_000))}
    patch = [op("copy", f"/a{index}", from_="/a") for index in range(9)]
    assert len(json_patch(document, patch)) == 10
    doubling = [op("copy", "/a/-", from_="/a") for _ in range(30)]  # 2^30 values if allowed
    with pytest.raises(InvalidPatch, match=f"more than {MAX_VALUES} values"):
        json_patch(document, doubling)
    moves = [op("move", f"/{to}", from_=f"/{at}") for at, to in [("a", "b"), ("b", "a")] * 6]
    with pytest.raises(InvalidPatch, match="moves and copies more than"):
        json_patch(document, moves)


def test_the_patched_document_meets_a_puts_limits() -> None:
    document = {"a": list(range(60_000))}
    with pytest.raises(InvalidPatch, match=f"more than {MAX_VALUES} values"):
        apply_patch(document, MERGE_PATCH, {"b": list(range(60_000))})
    with pytest.raises(InvalidPatch, match="more than 10000 objects and arrays"):
        apply_patch({}, JSON_PATCH, [op("add", "/a", value=[[] for _ in range(10_001)])])
    patched = apply_patch(document, MERGE_PATCH, {"b": [1]})
    assert patched["b"] == [1]
    assert document == {"a": list(range(60_000))}  # unchanged; what the patch left is shared
    assert patched["a"] is document["a"]


def test_the_cheap_count_of_the_limits_never_lets_a_document_past_them() -> None:
    # Brackets and commas inside strings are counted too: more, never fewer.
    document = {"a": list(range(60_000)), "s": "[,{" * 10}
    stored = dump_document(document)
    with pytest.raises(InvalidPatch, match=f"more than {MAX_VALUES} values"):
        apply_patch(document, MERGE_PATCH, {"b": list(range(60_000))}, stored)
    with pytest.raises(InvalidPatch, match="more than 10000 objects and arrays"):
        apply_patch({}, MERGE_PATCH, {"a": [[] for _ in range(10_001)]}, b"{}\n")
    with pytest.raises(InvalidPatch, match=f"more than {MAX_VALUES} values"):  # a copy doubles
        apply_patch(document, JSON_PATCH, [op("copy", "/b", from_="/a")], stored)
    near = {"a": list(range(50_000))}  # not sure from the count: checked, and within
    patched = apply_patch(near, MERGE_PATCH, {"b": list(range(49_990))}, dump_document(near))
    assert len(patched["b"]) == 49_990
    small = apply_patch(document, MERGE_PATCH, {"s": "x"}, stored)  # sure: nothing rendered
    assert small == {**document, "s": "x"}


@pytest.mark.parametrize(
    "patch",
    [[op("replace", "", value=[1])], [op("replace", "", value="x")], [op("move", "", from_="/a")]],
)
def test_a_json_patch_must_leave_an_object(patch: Any) -> None:
    check_patch(JSON_PATCH, patch)  # well-formed: its result is what is wrong
    with pytest.raises(UnprocessablePatch, match="not be a JSON object"):
        apply_patch({"a": [1]}, JSON_PATCH, patch)


def test_the_whole_document_may_be_replaced_by_an_object() -> None:
    assert apply_patch({"a": 1}, JSON_PATCH, [op("replace", "", value={"b": 2})]) == {"b": 2}
    assert apply_patch({"a": {"b": 1}}, JSON_PATCH, [op("move", "", from_="/a")]) == {"b": 1}


@pytest.mark.parametrize(
    "mimetype", ["application/json", "text/plain", "", "application/merge-patch", "*/*"]
)
def test_other_media_types_are_415_with_accept_patch(mimetype: str) -> None:
    with pytest.raises(UnsupportedPatchType) as raised:
        patch_type(mimetype)
    assert (raised.value.status, raised.value.code) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert raised.value.headers == {
        "Accept-Patch": "application/merge-patch+json, application/json-patch+json"
    }
    with pytest.raises(UnsupportedPatchType):
        apply_patch({}, mimetype, {})


def test_both_patch_media_types_are_known() -> None:
    assert patch_type("application/merge-patch+json") == MERGE_PATCH
    assert patch_type("application/json-patch+json") == JSON_PATCH
