"""The filter's SQL on a real PostgreSQL selects exactly the devices the Python predicate does.

A throw-away cluster (Debian's postgresql 15: initdb and pg_ctl, unprivileged when run as
root, listening on a socket in its own temporary directory) is started once for this module.
tests/pg.py of the PostgreSQL store will replace this local fixture when the branches merge.
"""

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from quart_iot.rql import Filter
from quart_iot.rql.sql import to_sql
from tests.rql_cases import DOCUMENTS, FILTERS

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
TABLE = "CREATE TABLE documents (mac text PRIMARY KEY, content jsonb NOT NULL)"


def _as_postgres_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_postgres_user(command), capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.fail(f"{command[0]} failed: {done.stdout}{done.stderr}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The socket directory of a fresh cluster (user postgres, database postgres)."""
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not installed ({PG_BIN}/initdb is missing)")
        pytest.skip(f"PostgreSQL is not installed ({PG_BIN}/initdb is missing)")
    directory = Path(tempfile.mkdtemp(prefix="rql-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "nobody", "nogroup")
    data = str(directory / "data")
    init = [str(PG_BIN / "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"]
    _run([*init, "-E", "UTF8", "--locale=C.UTF-8"])
    options = f"-c listen_addresses='' -k {directory} -c fsync=off"
    _run([str(PG_BIN / "pg_ctl"), "-D", data, "-o", options, "-l", f"{data}/log", "-w", "start"])
    try:
        yield str(directory)
    finally:
        stop = [str(PG_BIN / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_postgres_user(stop), check=False, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


# The default collation must not matter (strings are ordered by code point, as in Python):
# one database sorts as C, the other as ICU's English ("a" < "Z" there).
DATABASES = {
    "c": "CREATE DATABASE c TEMPLATE template0 LOCALE 'C.UTF-8'",
    "icu": "CREATE DATABASE icu TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
    "LOCALE 'C.UTF-8'",
}


async def _create_databases(socket_dir: str) -> None:
    admin = await asyncpg.connect(host=socket_dir, user="postgres", database="postgres")
    try:
        for statement in DATABASES.values():
            await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def databases(postgres: str) -> str:
    asyncio.run(_create_databases(postgres))
    return postgres


async def _selections(socket_dir: str, database: str) -> dict[str, set[str]]:
    connection = await asyncpg.connect(host=socket_dir, user="postgres", database=database)
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
def selected_by_sql(databases: str, request: pytest.FixtureRequest) -> dict[str, set[str]]:
    return asyncio.run(_selections(databases, request.param))


async def _sorted_by_default_collation(socket_dir: str) -> list[str]:
    connection = await asyncpg.connect(host=socket_dir, user="postgres", database="icu")
    try:
        rows = await connection.fetch("SELECT x FROM unnest(ARRAY['a', 'Z']) x ORDER BY x")
        return [row["x"] for row in rows]
    finally:
        await connection.close()


def test_the_icu_database_sorts_otherwise_than_code_points(databases: str) -> None:
    assert asyncio.run(_sorted_by_default_collation(databases)) == ["a", "Z"]


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
