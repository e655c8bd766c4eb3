"""Opening a PostgreSQL state: where it is (for messages, without the password), advisory lock
keys, errors worded for an operator, and the versioned migrations.

Migrations run in one transaction each, under a transaction-level advisory lock, so workers
starting together apply each one once, and a failing one leaves the previous schema intact.
"""

from __future__ import annotations

import importlib.resources
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from monitor.errors import StoreError

#: A connection of the store's pool (rows as tuples).
Conn = psycopg.AsyncConnection[TupleRow]

_MIGRATION_NAME = re.compile(r"(\d{4})_\w+\.sql")

#: classid of every advisory lock this store takes ("mon" in ASCII): tells them apart from
#: another application's locks in pg_locks.
LOCK_CLASS = 0x6D6F6E

#: The table holding the applied schema versions, one row each.
VERSION_TABLE = "monitor_schema"

#: How long a migration waits for a table lock (another session's long transaction on a
#: table it alters) before it fails, rather than queue every worker's queries behind it.
MIGRATION_LOCK_TIMEOUT = "30s"


def lock_key(purpose: str, schema: str, name: str = "") -> int:
    """A stable int4 objid for the advisory lock on `purpose` (and `name`) in `schema`: each
    schema of one database gets its own locks (tests run one schema each)."""
    value = zlib.crc32(f"{purpose}\0{schema}\0{name}".encode())
    return value - (1 << 32) if value >= 1 << 31 else value


@dataclass(frozen=True, slots=True)
class Location:
    """Where the state lives, as shown to an operator: never the password."""

    #: "postgresql://user@host:port/dbname".
    label: str
    #: The password, only to scrub it from any message that might echo it.
    password: str

    @classmethod
    def of(cls, dsn: str) -> Location:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"state is not a valid PostgreSQL URL: {scrub_text(exc)}") from None
        user = params.get("user") or ""
        host = params.get("host") or "localhost"
        port = params.get("port") or "5432"
        dbname = params.get("dbname") or user
        at = f"{user}@" if user else ""
        return cls(f"postgresql://{at}{host}:{port}/{dbname}", str(params.get("password") or ""))

    def scrub(self, text: object) -> str:
        """`text` on one line, with the password masked wherever it appears."""
        line = " ".join(str(text).split())
        return line.replace(self.password, "***") if self.password else line


def scrub_text(exc: object) -> str:
    """An error about a DSN that could not be parsed: keep only its first line, and mask
    anything that looks like a password in it."""
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"(password\s*=\s*|://[^:/@\s]*:)[^@\s]*", r"\1***", line)


def describe_error(where: Location, exc: BaseException, *, connecting: bool = False) -> str:
    """What went wrong with the PostgreSQL state and what to do, in one line."""
    detail = where.scrub(exc) or type(exc).__name__
    if connecting:
        return (
            f"cannot connect to the PostgreSQL state {where.label} ({detail}): check that "
            "PostgreSQL is running and reachable, and that `state:` names the right host, "
            "port, database and user (and that the password, if any, is right)"
        )
    if isinstance(exc, psycopg.OperationalError):
        return (
            f"PostgreSQL state {where.label}: connection failed or lost ({detail}); the last "
            "change may not have been stored: check that PostgreSQL is running"
        )
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return f"PostgreSQL state {where.label} is opened read-only by this command"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (
            f"PostgreSQL state {where.label}: permission denied ({detail}): grant the user "
            "in `state:` the right to create and write tables in its schema"
        )
    if isinstance(exc, psycopg.errors.DiskFull):
        return f"PostgreSQL state {where.label}: disk full ({detail}); nothing was stored"
    return f"PostgreSQL state {where.label}: {detail}"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The migrations in `monitor/store/migrations/postgres/`, in order."""
    root = importlib.resources.files("monitor.store").joinpath("migrations", "postgres")
    found = [
        Migration(int(m[1]), entry.name, entry.read_text(encoding="utf-8"))
        for entry in root.iterdir()
        if (m := _MIGRATION_NAME.fullmatch(entry.name))
    ]
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n: {[m.name for m in found]}")
    return found


async def prepare_schema(conn: Conn, schema: str | None, *, create: bool) -> str:
    """Make `schema` the connection's (None: keep its search_path), creating it first with
    `create`; returns the schema the tables live in."""
    if schema is not None:
        if create:
            async with conn.transaction():
                key = (LOCK_CLASS, lock_key("schema", schema))
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", key)
                name = sql.Identifier(schema)
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
        await set_search_path(conn, schema)
    cursor = await conn.execute("SELECT current_schema()")
    row = await cursor.fetchone()
    await conn.commit()
    if row is None or row[0] is None:
        if schema is not None:
            raise StoreError(f"the PostgreSQL state has no schema {schema!r} yet")
        raise StoreError(
            "the PostgreSQL search_path names no existing schema: create it, or add "
            "?schema=NAME to `state:`"
        )
    return str(row[0])


async def set_search_path(conn: Conn, schema: str) -> None:
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    await conn.commit()


def version_table(schema: str) -> sql.Composed:
    """`schema`.monitor_schema: qualified, so that a table of that name elsewhere on the
    search_path is never read for this schema's version."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(VERSION_TABLE))


async def schema_version(conn: Conn, schema: str) -> int:
    """The version applied to `schema`; 0 for a schema without monitor's tables."""
    table = version_table(schema).as_string(conn)
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    row = await cursor.fetchone()
    if row is None or not row[0]:
        return 0
    cursor = await conn.execute(
        sql.SQL("SELECT max(version) FROM {}").format(version_table(schema))
    )
    found = await cursor.fetchone()
    return int(found[0]) if found is not None and found[0] is not None else 0


async def migrate(
    conn: Conn,
    migrations: Sequence[Migration],
    where: Location,
    schema: str,
) -> None:
    """Apply each migration the schema lacks, each in its own transaction, under an advisory
    lock: a second worker waits, then finds it applied. StoreError for a schema newer than
    this code, or a migration that failed (rolled back: the schema stays as it was)."""
    known = max((m.version for m in migrations), default=0)
    key = (LOCK_CLASS, lock_key("migrate", schema))
    for migration in migrations:
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", key)
                # After the advisory lock (a worker waits for another's migration as long as
                # it takes): the DDL itself must not wait forever for a table lock.
                await conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(MIGRATION_LOCK_TIMEOUT)
                    )
                )
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(version_table(schema))
                )
                current = await schema_version(conn, schema)
                if current > known:
                    raise StoreError(
                        f"PostgreSQL state {where.label} (schema {schema}) was written by a "
                        f"newer version (schema {current}; this version knows {known})"
                    )
                if migration.version <= current:
                    continue
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(version_table(schema)),
                    (migration.version,),
                )
        except psycopg.Error as exc:
            raise StoreError(
                f"PostgreSQL state {where.label}: migration {migration.name} failed and was "
                f"rolled back (schema {schema} stays as it was): {where.scrub(exc)}"
            ) from exc


async def check_version(conn: Conn, known: int, where: Location, schema: str) -> None:
    """For an open that does not migrate (read-only, shared): the schema must be this
    version's."""
    current = await schema_version(conn, schema)
    await conn.commit()
    if current == 0:
        raise StoreError(
            f"PostgreSQL state {where.label} has no monitor tables in schema {schema}: "
            "start `monitor run` once to create them"
        )
    if current != known:
        raise StoreError(
            f"PostgreSQL state {where.label} (schema {schema}) is at schema {current}, this "
            f"version needs {known}: run this version's `monitor run` first"
        )
