"""The parsed form of an RQL filter: properties, values, like-patterns and the operators.

Nodes compare with Python's `==`, where `True == 1 == 1.0`: `eq(x,1)` and `eq(x,true)` are
equal nodes. Key a cache of filters by their text, not by their nodes.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Literal

# A JSON scalar as the filter wrote it: bool before int matters to whoever reads one of these
# (in Python, True == 1), so every evaluator tests `type(value)`, never isinstance.
Scalar = str | int | float | bool | None

MAC_PROPERTY = "mac_address"

Comparison = Literal["eq", "ne", "gt", "ge", "lt", "le"]
Logic = Literal["and", "or"]


@dataclass(frozen=True, slots=True)
class Property:
    """A slash-separated path into the content, or the device's MAC (`mac_address`)."""

    text: str  # as written, `~0`/`~1` escapes and all
    segments: tuple[str, ...]  # unescaped keys (or array indexes, as decimal text)

    @property
    def is_mac(self) -> bool:
        """Whether this is the device's MAC rather than a path into its content."""
        return self.segments == (MAC_PROPERTY,)


class Wildcard(Enum):
    """A `like` wildcard: `*` any run of characters (also none), `?` exactly one character."""

    ANY = "*"
    ONE = "?"


@dataclass(frozen=True, slots=True)
class Glob:
    """A `like` pattern: literal runs (str, never empty) and wildcards, in order."""

    parts: tuple[str | Wildcard, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    op: Comparison
    prop: Property
    value: Scalar


@dataclass(frozen=True, slots=True)
class In:
    prop: Property
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class Like:
    prop: Property
    pattern: Glob


@dataclass(frozen=True, slots=True)
class Exists:
    prop: Property


@dataclass(frozen=True, slots=True)
class Junction:
    op: Logic
    terms: tuple["Node", ...]


@dataclass(frozen=True, slots=True)
class Not:
    term: "Node"


Node = Compare | In | Like | Exists | Junction | Not
