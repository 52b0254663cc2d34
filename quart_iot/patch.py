"""JSON Patch (RFC 6902) and JSON Merge Patch (RFC 7396): the diff the history shows, and the
PATCH of a document. Pure functions: no argument is ever changed.

A patch that is not a patch (known from the patch alone: not a list of operations, an unknown
op, a bad pointer) is InvalidPatch (400); one that does not fit the document (a `test` that
fails, a path that does not exist, an index past the end) is PatchConflict (409).
"""

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from quart_iot.documents import (
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_VALUES,
    Document,
    InvalidJson,
    check_limits,
    dump_document,
)
from quart_iot.errors import InvalidPatch, PatchConflict, UnprocessablePatch, UnsupportedPatchType

Operation = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (MERGE_PATCH, JSON_PATCH)
_BAD_ESCAPE = re.compile(r"~(?![01])")
_PAST_THE_END = "-"
_INDEX = re.compile(r"0|[1-9][0-9]*")  # no leading zero (RFC 6901 4)
# What each op needs beside "path" (RFC 6902 4.1-4.6).
_NEEDS = {
    "add": "value",
    "remove": "",
    "replace": "value",
    "move": "from",
    "copy": "from",
    "test": "value",
}


# -- the diff ------------------------------------------------------------------------------


def make_patch(source: Any, target: Any) -> list[Operation]:
    """The operations that turn `source` into `target` (add, remove, replace)."""
    operations: list[Operation] = []
    _diff(source, target, "", operations)
    return operations


def _diff(source: Any, target: Any, path: str, out: list[Operation]) -> None:
    if isinstance(source, dict) and isinstance(target, dict):
        for key in source:
            if key not in target:
                out.append({"op": "remove", "path": f"{path}/{escape(key)}"})
        for key, value in target.items():
            if key in source:
                _diff(source[key], value, f"{path}/{escape(key)}", out)
            else:
                out.append({"op": "add", "path": f"{path}/{escape(key)}", "value": value})
    elif isinstance(source, list) and isinstance(target, list) and len(source) == len(target):
        for index, (old, new) in enumerate(zip(source, target, strict=True)):
            _diff(old, new, f"{path}/{index}", out)
    elif not _same(source, target):
        out.append({"op": "replace", "path": path, "value": target})


def _same(a: Any, b: Any) -> bool:
    """Equal as stored: true is not 1, and 1.0 is not 1 (their bytes and ETags differ)."""
    return type(a) is type(b) and a == b


# -- JSON Pointer (RFC 6901) -----------------------------------------------------------------


def escape(token: str) -> str:
    """A JSON Pointer reference token: `~` as `~0`, `/` as `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


def pointer(tokens: Iterable[str | int]) -> str:
    """A JSON Pointer from its reference tokens (strings, or array indexes)."""
    return "".join(f"/{escape(str(token))}" for token in tokens)


def parse_pointer(text: str) -> tuple[str, ...]:
    """The reference tokens of a JSON Pointer; ValueError when it is not one."""
    if not text:
        return ()
    if not text.startswith("/"):
        raise ValueError("a JSON Pointer is empty or starts with /")
    if _BAD_ESCAPE.search(text):
        raise ValueError("in a JSON Pointer, ~ is followed by 0 or 1")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in text[1:].split("/"))


# -- PATCH -----------------------------------------------------------------------------------


def patch_type(mimetype: str) -> str:
    """The patch format of a PATCH's media type, or UnsupportedPatchType (415)."""
    if mimetype not in PATCH_TYPES:
        raise UnsupportedPatchType
    return mimetype


def check_patch(mimetype: str, patch: Any) -> None:
    """A patch that no document can take is InvalidPatch (400) before any is read: a JSON
    Patch that is not one, a merge patch that is not an object (it would replace the whole
    document with what is not a config)."""
    if patch_type(mimetype) == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise InvalidPatch("A merge patch of a config is a JSON object", [])
        return
    if not isinstance(patch, list):
        raise InvalidPatch("A JSON Patch is an array of operations", [])
    for index, operation in enumerate(patch):
        _step(index, operation)


def apply_patch(
    document: Document, mimetype: str, patch: Any, stored: bytes | None = None
) -> Document:
    """The document a PATCH makes, checked as a PUT's body is: a JSON object within the limits
    of quart_iot.documents (the size limit is the store's, as for a PUT). It shares what the
    patch did not touch with `document` (which is never changed); `stored` is `document`'s
    stored form, when known (it makes the check of the limits cheap)."""
    merge = patch_type(mimetype) == MERGE_PATCH
    result = merge_patch(document, patch) if merge else json_patch(document, patch)
    if not isinstance(result, dict):
        raise UnprocessablePatch
    if stored is None or not _surely_within_limits(stored, merge, patch):
        _check_limits(result)
    return result


def _surely_within_limits(stored: bytes, merge: bool, patch: Any) -> bool:
    """Whether the result cannot break the limits, counted without rendering it: at most the
    document's objects, arrays and values plus the patch's (each bracket and comma of the
    stored bytes counted, inside strings too: more, never fewer). Depth needs no count: a
    merge patch nests no deeper than the document or itself, and each JSON Patch operation
    checks its own (`_check_depth`). A copy can multiply values: then the limits are checked."""
    if not merge and any(isinstance(o, dict) and o.get("op") == "copy" for o in patch):
        return False
    containers = stored.count(b"{") + stored.count(b"[")
    values = stored.count(b",") + containers + 1
    patch_containers, patch_values = _tally(patch)
    return containers + patch_containers <= MAX_CONTAINERS and values + patch_values <= MAX_VALUES


def _tally(value: Any) -> tuple[int, int]:
    """(objects and arrays, values) in a value, itself included."""
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list):
        return 0, 1
    containers, values = 1, 1
    for member in value:
        inner_containers, inner_values = _tally(member)
        containers += inner_containers
        values += inner_values
    return containers, values


def _check_limits(result: Document) -> None:
    """Within a PUT body's limits, on the stored form: every value came from a strict document
    or a strict body, so the shape is all there is left to check."""
    try:
        check_limits(dump_document(result))
    except InvalidJson as error:
        raise InvalidPatch(f"The patched document is not within the limits: {error}", []) from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 MergePatch(target, patch); members it does not touch are shared, not copied."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def reject_duplicate_members(data: bytes) -> None:
    """RFC 6902 A.13: an operation with a member twice (two "op"s) is refused, not read as its
    last one. `data` is a body that parse_json accepted."""
    json.loads(data, object_pairs_hook=_unique_members)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        names = Counter(name for name, _ in pairs)
        twice = next(name for name, count in names.items() if count > 1)
        raise InvalidPatch(f"An object of the patch has the member {twice!r} twice", [])
    return members


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902: the operations applied in order, all or none; 400 for a malformed patch
    before any is tried."""
    if not isinstance(operations, list):
        raise InvalidPatch("A JSON Patch is an array of operations", [])
    steps = [_step(index, operation) for index, operation in enumerate(operations)]
    patching = _Patching(document)
    for step in steps:
        patching.apply(step)
    return patching.root


@dataclass(frozen=True, slots=True)
class _Step:
    """One operation, read: its index in the patch, the op, parsed pointers, the value."""

    index: int
    op: str
    path: tuple[str, ...]
    source: tuple[str, ...]  # "from", for move and copy
    value: Any

    def conflict(self, reason: str, tokens: tuple[str, ...] | None = None) -> PatchConflict:
        where = pointer(self.path if tokens is None else tokens)
        return PatchConflict(self.index, self.op, where, reason)


def _step(index: int, operation: Any) -> _Step:
    if not isinstance(operation, dict):
        raise InvalidPatch("An operation is an object", [index])
    op = operation.get("op")
    if not isinstance(op, str) or op not in _NEEDS:
        message = "op is one of add, remove, replace, move, copy, test"
        raise InvalidPatch(message, [index, "op"])
    needs = _NEEDS[op]
    if needs == "value" and "value" not in operation:
        raise InvalidPatch(f"A {op} operation has a value", [index, "value"], "missing")
    path = _pointer(operation, index, "path")
    source = _pointer(operation, index, "from") if needs == "from" else ()
    if op == "move" and len(source) < len(path) and path[: len(source)] == source:
        raise UnprocessablePatch("A value cannot be moved into one of its own members", index)
    if op == "remove" and not path:
        raise UnprocessablePatch("The whole document cannot be removed (DELETE does that)", index)
    return _Step(index, op, path, source, operation.get("value"))


def _pointer(operation: Operation, index: int, field: str) -> tuple[str, ...]:
    text = operation.get(field)
    if not isinstance(text, str):
        raise InvalidPatch(f"{field} is a JSON Pointer (a string)", [index, field], "missing")
    try:
        return parse_pointer(text)
    except ValueError as error:
        raise InvalidPatch(f"{field} {text!r}: {error}", [index, field]) from None


class _Patching:
    """A document being patched. A container is changed only once this patch has made its own
    shallow copy of it: the input is never changed, and only the paths the operations touch
    are copied (a full copy of a 20 KB document took a millisecond)."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self._own: dict[int, Any] = {}  # id -> a copy this patch made (kept alive: ids stay)
        self._carried = 0  # values moved or copied so far

    def apply(self, step: _Step) -> None:
        _OPERATIONS[step.op](self, step)

    def get(self, step: _Step, tokens: tuple[str, ...]) -> Any:
        node = self.root
        for depth, token in enumerate(tokens):
            node = _child(step, node, tokens[: depth + 1], token)
        return node

    def add(self, step: _Step, tokens: tuple[str, ...], value: Any) -> None:
        if not tokens:
            self.root = value
            return
        parent, last = self._parent(step, tokens), tokens[-1]
        if isinstance(parent, dict):
            parent[last] = value
        else:
            parent.insert(_index(step, tokens, len(parent), end=True), value)

    def replace(self, step: _Step, tokens: tuple[str, ...], value: Any) -> None:
        if not tokens:
            self.root = value
            return
        parent, last = self._parent(step, tokens), tokens[-1]
        if isinstance(parent, dict):
            if last not in parent:
                raise step.conflict("the path does not exist", tokens)
            parent[last] = value
        else:
            parent[_index(step, tokens, len(parent), end=False)] = value

    def remove(self, step: _Step, tokens: tuple[str, ...]) -> Any:
        parent, last = self._parent(step, tokens), tokens[-1]
        if isinstance(parent, dict):
            if last not in parent:
                raise step.conflict("the path does not exist", tokens)
            return parent.pop(last)
        return parent.pop(_index(step, tokens, len(parent), end=False))

    def carry(self, step: _Step, value: Any) -> int:
        """The depth of a value a move or a copy carries, counted: at most MAX_VALUES for the
        whole patch (each costs a walk, and copies of copies double the document each time)."""
        count, depth = _measure(value)
        self._carried += count
        if self._carried > MAX_VALUES:
            message = f"The patch moves and copies more than {MAX_VALUES} values in all"
            raise InvalidPatch(message, [step.index])
        return depth

    def _parent(self, step: _Step, tokens: tuple[str, ...]) -> Any:
        """The container holding the last token, made this patch's own with those above it."""
        node = self.root = self._mine(step, self.root, ())
        for depth, token in enumerate(tokens[:-1]):
            child = self._mine(step, _child(step, node, tokens[: depth + 1], token), tokens)
            node[token if isinstance(node, dict) else int(token)] = child
            node = child
        return node

    def _mine(self, step: _Step, node: Any, tokens: tuple[str, ...]) -> Any:
        if not isinstance(node, (dict, list)):
            raise step.conflict("the path goes through a value that is not a container", tokens)
        if id(node) in self._own:
            return node
        mine = dict(node) if isinstance(node, dict) else list(node)
        self._own[id(mine)] = mine
        return mine


def _add(patching: _Patching, step: _Step) -> None:
    _check_depth(step, step.path, _measure(step.value)[1])
    patching.add(step, step.path, step.value)


def _remove(patching: _Patching, step: _Step) -> None:
    patching.remove(step, step.path)


def _replace(patching: _Patching, step: _Step) -> None:
    _check_depth(step, step.path, _measure(step.value)[1])
    patching.replace(step, step.path, step.value)


def _move(patching: _Patching, step: _Step) -> None:
    if step.source == step.path:  # RFC 6902 4.4: it must exist; nothing moves
        patching.get(step, step.source)
        return
    value = patching.remove(step, step.source)
    _check_depth(step, step.path, patching.carry(step, value))
    patching.add(step, step.path, value)


def _copy(patching: _Patching, step: _Step) -> None:
    value = patching.get(step, step.source)
    _check_depth(step, step.path, patching.carry(step, value))
    # A fresh copy: the patch may change containers it made itself in place, and the source
    # may be one of them.
    patching.add(step, step.path, _clone(value))


def _test(patching: _Patching, step: _Step) -> None:
    if not json_equal(patching.get(step, step.path), step.value):
        raise step.conflict("test failed: the value there is not the one given")


_OPERATIONS: dict[str, Callable[[_Patching, _Step], None]] = {
    "add": _add,
    "remove": _remove,
    "replace": _replace,
    "move": _move,
    "copy": _copy,
    "test": _test,
}


def _child(step: _Step, node: Any, tokens: tuple[str, ...], token: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise step.conflict("the path does not exist", tokens)
        return node[token]
    if isinstance(node, list):
        return node[_index(step, tokens, len(node), end=False)]
    raise step.conflict("the path goes through a value that is not a container", tokens)


def _index(step: _Step, tokens: tuple[str, ...], size: int, *, end: bool) -> int:
    """An array index: digits with no leading zero, or `-` (past the end) where `end` allows."""
    token = tokens[-1]
    if token == _PAST_THE_END and end:
        return size
    if not _INDEX.fullmatch(token):
        raise step.conflict(f"{token!r} is not an array index", tokens)
    index = int(token) if len(token) <= 10 else size + 1  # longer: past any array here
    if index > size or (index == size and not end):
        raise step.conflict(f"index {index} is past the end of the array", tokens)
    return index


def _check_depth(step: _Step, tokens: tuple[str, ...], depth: int) -> None:
    """Nothing deeper than MAX_DEPTH is ever built (a copy into itself doubles the depth)."""
    if len(tokens) + depth > MAX_DEPTH:
        message = f"The patched document would be nested deeper than {MAX_DEPTH} levels"
        raise InvalidPatch(message, [step.index])


def _measure(value: Any) -> tuple[int, int]:
    """(values, depth): how many values (containers included), and how deeply nested."""
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list):
        return 1, 0
    count, depth = 1, 0
    for member in value:
        member_count, member_depth = _measure(member)
        count += member_count
        depth = max(depth, member_depth)
    return count, depth + 1


def _clone(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _clone(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_clone(member) for member in value]
    return value


def json_equal(a: Any, b: Any) -> bool:
    """Equal as RFC 6902 4.6 says: numbers by value (1 is 1.0), true is not 1, objects in any
    member order."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(value, b[key]) for key, value in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    return type(a) is type(b) and bool(a == b)
