"""The filter's SQL on a real PostgreSQL selects exactly the devices the Python predicate does.

Two databases of the session's cluster (tests/pg.py): one sorting as C, the other as ICU's
English, so that the default collation is seen not to matter.
"""

import asyncio
import itertools
import json
import os
from collections.abc import Iterator

import asyncpg
import pytest

from quart_iot.rql import Filter
from quart_iot.rql.sql import to_sql
from tests.pg import Cluster
from tests.rql_cases import DOCUMENTS, FILTERS

TABLE = "CREATE TABLE documents (mac text PRIMARY KEY, content jsonb NOT NULL)"
_names = itertools.count(1)

# The default collation must not matter (strings are ordered by code point, as in Python):
# one database sorts as C, the other as ICU's English ("a" < "Z" there).
DATABASES = {
    "c": "CREATE DATABASE \"{}\" TEMPLATE template0 LOCALE 'C.UTF-8'",
    "icu": "CREATE DATABASE \"{}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
    "LOCALE 'C.UTF-8'",
}


async def _admin(cluster: Cluster, statements: list[str]) -> None:
    admin = await asyncpg.connect(cluster.admin_url)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def databases(pg_cluster: Cluster) -> Iterator[dict[str, str]]:
    """The URL of each database, by its kind (dropped after the module)."""
    names = {kind: f"rql_{kind}_{os.getpid()}_{next(_names)}" for kind in DATABASES}
    asyncio.run(_admin(pg_cluster, [DATABASES[kind].format(name) for kind, name in names.items()]))
    yield {kind: pg_cluster.url(name) for kind, name in names.items()}
    drops = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names.values()]
    asyncio.run(_admin(pg_cluster, drops))


async def _selections(url: str) -> dict[str, set[str]]:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(TABLE)
        rows = [(mac, json.dumps(content)) for mac, content in DOCUMENTS.items()]
        await connection.executemany("INSERT INTO documents VALUES ($1, $2::text::jsonb)", rows)
        found = {}
        for text in FILTERS:
            sql = to_sql(Filter(text).node, content="content", mac="mac")
            query = f"SELECT mac FROM documents WHERE {sql.where}"
            found[text] = {row["mac"] for row in await connection.fetch(query, *sql.params)}
        assert await connection.fetchval("SELECT count(*) FROM documents") == len(DOCUMENTS)
        return found
    finally:
        await connection.close()


@pytest.fixture(scope="module", params=sorted(DATABASES))
def selected_by_sql(
    databases: dict[str, str], request: pytest.FixtureRequest
) -> dict[str, set[str]]:
    return asyncio.run(_selections(databases[request.param]))


async def _sorted_by_default_collation(url: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT x FROM unnest(ARRAY['a', 'Z']) x ORDER BY x")
        return [row["x"] for row in rows]
    finally:
        await connection.close()


def test_the_icu_database_sorts_otherwise_than_code_points(databases: dict[str, str]) -> None:
    assert asyncio.run(_sorted_by_default_collation(databases["icu"])) == ["a", "Z"]


@pytest.mark.parametrize("text", FILTERS)
def test_sql_selects_what_the_predicate_selects(
    text: str, selected_by_sql: dict[str, set[str]]
) -> None:
    expected = set(Filter(text).select(DOCUMENTS.items()))
    assert selected_by_sql[text] == expected


def test_the_cases_select_neither_nothing_nor_everything(
    selected_by_sql: dict[str, set[str]],
) -> None:
    sizes = [len(selected) for selected in selected_by_sql.values()]
    assert sum(0 < size < len(DOCUMENTS) for size in sizes) > len(FILTERS) * 0.8


def test_values_are_bind_parameters_never_sql_text() -> None:
    sql = to_sql(
        Filter('and(eq(it\'s/x,"\'; DROP TABLE t; --"),like(mac_address,"a\'*"))').node,
        content="content",
        mac="mac",
        first=3,
    )
    assert "DROP" not in sql.where
    assert "it's" not in sql.where
    assert sql.params == [["it's", "x"], '"\'; DROP TABLE t; --"', "a'%"]
    assert "$3::text[]" in sql.where
    assert "$5::text" in sql.where
