"""RFC 6902 JSON Patch between two documents: what a person reads to see what changed."""

from typing import Any

Operation = dict[str, Any]


def make_patch(source: Any, target: Any) -> list[Operation]:
    """The operations that turn `source` into `target` (add, remove, replace)."""
    operations: list[Operation] = []
    _diff(source, target, "", operations)
    return operations


def _diff(source: Any, target: Any, path: str, out: list[Operation]) -> None:
    if isinstance(source, dict) and isinstance(target, dict):
        for key in source:
            if key not in target:
                out.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in target.items():
            if key in source:
                _diff(source[key], value, f"{path}/{_escape(key)}", out)
            else:
                out.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": value})
    elif isinstance(source, list) and isinstance(target, list) and len(source) == len(target):
        for index, (old, new) in enumerate(zip(source, target, strict=True)):
            _diff(old, new, f"{path}/{index}", out)
    elif not _same(source, target):
        out.append({"op": "replace", "path": path, "value": target})


def _same(a: Any, b: Any) -> bool:
    """Equal as stored: true is not 1, and 1.0 is not 1 (their bytes and ETags differ)."""
    return type(a) is type(b) and a == b


def _escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901): `~` as `~0`, `/` as `~1`."""
    return key.replace("~", "~0").replace("/", "~1")
