"""RQL, the filter language of fleet search (a subset of Eclipse Ditto's RQL).

`Filter(text)` parses and compiles a filter once (InvalidFilter names the position of the
first error); `.matches(mac, content)` then selects devices. `Fields(text)` reads the values
a list adds with `fields=`. `quart_iot.rql.sql.to_sql` gives PostgreSQL the same filter as a
WHERE clause with bind parameters. The language is described in docs/API.md.
"""

from collections.abc import Iterable
from typing import Any

from quart_iot.documents import Document
from quart_iot.rql.nodes import Node, Property
from quart_iot.rql.predicate import compile_filter, field_getter
from quart_iot.rql.syntax import parse_fields, parse_filter


class Filter:
    """A parsed filter and its predicate, built once per request."""

    __slots__ = ("matches", "node", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.node: Node = parse_filter(text)
        self.matches = compile_filter(self.node)

    def select(self, devices: Iterable[tuple[str, Document]]) -> list[str]:
        """The MACs of the devices the filter selects, in the order given."""
        matches = self.matches
        return [mac for mac, content in devices if matches(mac, content)]


class Fields:
    """A parsed `fields` list: the values it asks for, by the text of each property."""

    __slots__ = ("extract", "properties", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.properties: tuple[Property, ...] = parse_fields(text)
        self.extract = field_getter(self.properties)

    def of(self, mac: str, content: Document) -> dict[str, Any]:
        """`{"mqtt/host": ..., "enableOTA": ...}` for one device, null where it has none."""
        return self.extract(mac, content)


__all__ = ["Fields", "Filter"]
