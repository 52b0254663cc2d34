"""A parsed filter as a PostgreSQL WHERE clause over a `jsonb` column, with bind parameters.

Every value of the filter (strings, numbers, keys of the path, like-patterns) is a bind
parameter (`$1`, `$2`... as asyncpg numbers them), each typed by a cast in the text and passed
as a str or a list of str, so the clause does not depend on the driver's codecs. Only the
column expressions the caller names, and this module's own keywords, are SQL text.

The clause selects exactly what `quart_iot.rql.predicate` selects (tests/test_rql_sql.py runs
both over the same documents): every operator is TRUE or FALSE, never NULL, so `not` is
negation and not SQL's three-valued logic.
"""

import json
import re
from dataclasses import dataclass, field

from quart_iot.rql.nodes import (
    Compare,
    Exists,
    Glob,
    In,
    Junction,
    Like,
    Node,
    Not,
    Property,
    Scalar,
    Wildcard,
)

Param = str | list[str]

_SQL_ORDER = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
# PostgreSQL reads an array index with strtol: "-1" is the last element, "01" and "+1" the
# second. JSON Pointer (and the predicate) take only "0" or digits without a leading zero as
# an index; for any other integer-looking key the clause looks in objects only.
_CANONICAL_INDEX = re.compile(r"0|[1-9][0-9]*")
_INTEGER_LIKE = re.compile(r"[+-]?[0-9]+")
_LIKE_SPECIAL = re.compile(r"([\\%_])")
_ESCAPE = "ESCAPE E'\\\\'"  # a backslash, whatever standard_conforming_strings says


@dataclass(frozen=True, slots=True)
class SqlFilter:
    """`WHERE {where}` with `params` bound from `$first` on."""

    where: str
    params: list[Param]


def to_sql(node: Node, *, content: str, mac: str, first: int = 1) -> SqlFilter:
    """The WHERE clause of a filter. `content` (a `jsonb` expression) and `mac` (a text
    expression) are SQL written by the caller, never a client's text."""
    builder = _Builder(content, mac, first)
    return SqlFilter(builder.node(node), builder.params)


@dataclass
class _Builder:
    content: str
    mac: str
    first: int
    params: list[Param] = field(default_factory=list)

    def param(self, value: Param, cast: str) -> str:
        self.params.append(value)
        return f"${self.first + len(self.params) - 1}::{cast}"

    def node(self, node: Node) -> str:
        if isinstance(node, Junction):
            joiner = " AND " if node.op == "and" else " OR "
            return "(" + joiner.join(self.node(term) for term in node.terms) + ")"
        if isinstance(node, Not):
            return f"(NOT {self.node(node.term)})"
        if node.prop.is_mac:
            return self.mac_atom(node)
        return self.content_atom(node, self.value(node.prop))

    # -- a path into the content -------------------------------------------------------------

    def value(self, prop: Property) -> str:
        """The jsonb at the path, or NULL where the document has none."""
        expression, run = self.content, list[str]()
        for key in prop.segments:
            if _INTEGER_LIKE.fullmatch(key) and not _CANONICAL_INDEX.fullmatch(key):
                expression = self.path(expression, run)
                run = []
                step = f"{expression} -> {self.param(key, 'text')}"
                expression = f"(CASE WHEN jsonb_typeof({expression}) = 'object' THEN {step} END)"
            else:
                run.append(key)
        return self.path(expression, run)

    def path(self, expression: str, keys: list[str]) -> str:
        return f"({expression} #> {self.param(keys, 'text[]')})" if keys else expression

    def content_atom(self, node: Compare | In | Like | Exists, value: str) -> str:
        if isinstance(node, Exists):
            return f"({value} IS NOT NULL)"
        if isinstance(node, In):
            values = self.param([_json(v) for v in node.values], "text[]")
            return f"COALESCE({value} = ANY({values}::jsonb[]), false)"
        if isinstance(node, Like):
            test = f"({value} #>> '{{}}') LIKE {self.param(_like(node.pattern), 'text')} {_ESCAPE}"
            return _when(value, "string", test)
        if node.op in ("eq", "ne"):
            literal = self.param(_json(node.value), "text") + "::jsonb"
            if node.op == "eq":
                return f"COALESCE({value} = {literal}, false)"
            return f"({value} IS DISTINCT FROM {literal})"
        return self.ordered(node, value)

    def ordered(self, node: Compare, value: str) -> str:
        order = _SQL_ORDER[node.op]
        if isinstance(node.value, str):
            text = f"({value} #>> '{{}}') COLLATE \"C\""  # code point order, as in Python
            return _when(value, "string", f"{text} {order} {self.param(node.value, 'text')}")
        number = self.param(_json(node.value), "text") + "::numeric"
        return _when(value, "number", f"({value})::numeric {order} {number}")

    # -- the MAC -----------------------------------------------------------------------------

    def mac_atom(self, node: Compare | In | Like | Exists) -> str:
        """The MAC is always there and always a string: other types never equal it."""
        if isinstance(node, Exists):
            return "TRUE"
        if isinstance(node, In):
            strings = [value for value in node.values if isinstance(value, str)]
            return f"({self.mac} = ANY({self.param(strings, 'text[]')}))" if strings else "FALSE"
        if isinstance(node, Like):
            return f"({self.mac} LIKE {self.param(_like(node.pattern), 'text')} {_ESCAPE})"
        if not isinstance(node.value, str):
            return "TRUE" if node.op == "ne" else "FALSE"
        order = {"eq": "=", "ne": "<>", **_SQL_ORDER}[node.op]
        return f'({self.mac} COLLATE "C" {order} {self.param(node.value, "text")})'


def _when(value: str, json_type: str, test: str) -> str:
    """`test` where the value has that JSON type, else FALSE (CASE keeps a cast of another
    type from being evaluated at all; COALESCE turns a missing value's NULL into FALSE)."""
    return f"COALESCE(CASE WHEN jsonb_typeof({value}) = '{json_type}' THEN {test} END, false)"


def _json(value: Scalar) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _like(pattern: Glob) -> str:
    """A LIKE pattern with backslash escapes: `*` is `%`, `?` is `_`, and `%`, `_`, `\\` in
    the literal runs escaped."""
    return "".join(
        "%"
        if part is Wildcard.ANY
        else "_"
        if part is Wildcard.ONE
        else _LIKE_SPECIAL.sub(r"\\\1", str(part))
        for part in pattern.parts
    )
