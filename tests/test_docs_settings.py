"""Every setting the docs name exists in quart_iot/settings.py, and every default they quote is
the code's: README's table, .env.example's "Default:" lines, and "(default X)" in prose.

A failure names the file, the setting and both values, so that whoever merges a new setting
knows which line to fix.
"""

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from quart_iot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / ".env.example", *sorted((ROOT / "docs").glob("*.md"))]
# Upper-case names in the docs that are not settings, and what they are.
NOT_SETTINGS = {
    "WRITES_AT_ONCE": "a constant of quart_iot/store/bulkchanges.py: devices written at once",
    "BACKUP_DIR": "a variable of OPERATIONS.md's backup commands",
    "CAP_DAC_OVERRIDE": "a Linux capability",
    "CAP_DAC_READ_SEARCH": "a Linux capability",
    "CHANGES_KEPT": "a constant of the directory index (fleet search)",
    "CONFIG_OPERATION_DURATION": "a metric of the Flask version, quoted",
    "HTTP_200": "a constant of the Flask version, quoted",
    "LOAD_HOLD_REPORT": "an environment variable of tests/test_load_hold.py",
    "LOAD_HOLD_SECONDS": "an environment variable of tests/test_load_hold.py",
    "MAX_BYTES": "a constant of the search cache",
    "MAX_SEARCHES": "a constant of the search cache",
    "MIGRATING_FROM_FLASK": "a file name",
    "O_NOFOLLOW": "an open(2) flag",
    "O_NONBLOCK": "an open(2) flag",
    "PR_SET_PDEATHSIG": "a prctl(2) option",
    "RACY_NS": "a constant of the store",
    "RLIMIT_NOFILE": "a resource limit",
    "SO_REUSEPORT": "a socket option",
}
_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_NUMBER = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)(?: ?(KiB|MiB|GiB)\b)?")
_UNITS = {None: 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def settings() -> dict[str, FieldInfo]:
    return {name.upper(): field for name, field in Settings.model_fields.items()}


def code_literals() -> set[str]:
    """Every string constant of quart_iot's code: error codes, environment names it reads."""
    found = set()
    for path in (ROOT / "quart_iot").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def code_default(field: FieldInfo) -> Any:
    """The default as the docs would quote it: a value, "required" or "random"."""
    if field.default_factory is not None:
        value = field.get_default(call_default_factory=True, validated_data={})
        return "random" if not field.repr else value  # SECRET_KEY: a fresh secret per process
    return "required" if field.default is PydanticUndefined else field.default


def agrees(quoted: str, default: Any) -> bool:
    """Whether a default as the docs write it (`10`, `10,000`, `none`, `false`...) is `default`."""
    text = quoted.strip().strip("`").strip()
    if default is None or default == []:
        return text.lower() in {"none", "unset", "unset (off)", "off", "[]", "one of the two"}
    if isinstance(default, bool):
        return text.lower() == str(default).lower()
    if isinstance(default, int | float):
        number = _NUMBER.match(text)
        if number is None:
            return False
        return float(number[1].replace(",", "")) * _UNITS[number[2]] == float(default)
    if isinstance(default, list):
        return [item.strip() for item in re.split(r"[,\s]+", text) if item] == default
    return text == str(default) or text.split()[0] == str(default)  # "random per process"


def readme_table() -> list[tuple[str, str]]:
    """(setting, quoted default) of README's table; `A`, `B` | `1`, `2` pairs by position."""
    rows = re.findall(r"^\| ((?:`[A-Z0-9_]+`(?:, )?)+) \| ([^|]+) \|", read(DOCS[0]), re.M)
    pairs = []
    for names, defaults in rows:
        values = re.findall(r"`([^`]+)`", defaults) or [defaults.strip()]
        for index, name in enumerate(re.findall(r"`([A-Z0-9_]+)`", names)):
            pairs.append((name, values[min(index, len(values) - 1)]))
    return pairs


def env_example_defaults() -> list[tuple[str, str]]:
    """(setting, default) from .env.example: a "Default(s): a and b" line, then the settings."""
    pairs: list[tuple[str, str]] = []
    pending: list[str] = []
    for line in read(ROOT / ".env.example").splitlines():
        text = line.lstrip("# ").strip()
        if match := re.search(r"\bDefaults?: (.*)$", text):
            values = match[1].split(";")[0].removesuffix(".")
            pending = [v.strip() for v in re.split(r", | and ", values)]
        elif match := re.match(r"([A-Z][A-Z0-9_]+)=", text):
            if pending:
                pairs.append((match[1], pending.pop(0) if len(pending) > 1 else pending[0]))
        else:
            pending = []  # prose or a blank line: a new setting's description begins
    return pairs


def prose_defaults(doc: Path) -> list[tuple[str, str]]:
    """(setting, default) for "`NAME` ... (default X" or "`NAME`, ..., default `X`" in prose."""
    pattern = r"`([A-Z][A-Z0-9_]+)`([^`()]{0,60}?)[(,] ?default:? (`[^`]+`|[\w.,:/-]+(?: [KMG]iB)?)"
    return [(name, value) for name, _, value in re.findall(pattern, read(doc))]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_setting_named_in_the_docs_exists(doc: Path) -> None:
    known = set(settings()) | code_literals() | set(NOT_SETTINGS)
    unknown = sorted(set(_NAME.findall(read(doc))) - known)
    assert unknown == [], (
        f"{doc.relative_to(ROOT)} names {unknown}: not settings of quart_iot/settings.py "
        "(add the setting, fix the doc, or list the name in NOT_SETTINGS with what it is)"
    )


def quoted_defaults() -> list[tuple[str, str, str]]:
    """(file, setting, quoted default) from every doc."""
    found = [("README.md", name, value) for name, value in readme_table()]
    found += [(".env.example", name, value) for name, value in env_example_defaults()]
    for doc in DOCS:
        found += [(doc.name, name, value) for name, value in prose_defaults(doc)]
    return found


def test_the_docs_quote_defaults_of_most_settings() -> None:
    quoted = {name for _, name, _ in quoted_defaults()}
    assert len(quoted & set(settings())) >= len(settings()) * 2 // 3


def test_every_default_quoted_in_the_docs_is_the_codes() -> None:
    fields = settings()
    wrong = [
        f"{where}: {name} default {value!r}, but quart_iot/settings.py has {code_default(field)!r}"
        for where, name, value in quoted_defaults()
        if (field := fields.get(name)) is not None and not agrees(value, code_default(field))
    ]
    assert wrong == []


def test_every_setting_is_in_readme_and_env_example() -> None:
    named = {
        "README.md": {name for name, _ in readme_table()} | set(_NAME.findall(read(DOCS[0]))),
        ".env.example": set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", read(DOCS[1]), re.M)),
    }
    missing = [f"{name} is missing from {doc}" for doc, names in named.items()
               for name in sorted(settings()) if name not in names]  # fmt: skip
    assert missing == []
