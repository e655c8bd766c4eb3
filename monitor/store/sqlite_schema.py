"""Opening a SQLite state file: instance lock, connection settings, transactions, migrations.

Everything here is synchronous and runs on the store's worker thread.
"""

from __future__ import annotations

import fcntl
import importlib.resources
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import StoreError

_MIGRATION_NAME = re.compile(r"(\d{4})_\w+\.sql")


class InstanceLock:
    """`<db>.lock`, flock-ed while a store has the file open: one process per state file.

    SQLite's own locking would let a second daemon run and double every alert; the lock file
    makes it refuse at start, naming the holder. flock locks belong to the open file, so the
    kernel drops them when the holder dies, even on kill -9: no stale locks to clean up.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"state file {self.db_path} is in use by another monitor process "
                f"(pid {holder}); only one process may use a SQLite state file"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the settings the outbox relies on; StoreError if it is no database."""
    conn = sqlite3.connect(path, isolation_level=None)  # we issue BEGIN/COMMIT ourselves
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"state file {path}: cannot use WAL journal mode (got {mode!r})")
        # FULL: a committed outbox row survives power loss, not only a process crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
            raise StoreError(f"state file {path} is not a SQLite database") from exc
        raise StoreError(f"state file {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; any exception rolls everything back and propagates.

    IMMEDIATE takes the write lock up front, so a transaction never fails half-way on lock
    upgrade (SQLITE_BUSY); busy_timeout covers a reader still holding the file.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full) may leave the transaction open; SQLite may also have
        # rolled back on its own already (some I/O errors), hence the check.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL script; `version` becomes `PRAGMA user_version` once it is applied."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The migrations shipped in `monitor/store/migrations/`, in order."""
    root = importlib.resources.files("monitor.store").joinpath("migrations")
    found = [
        Migration(int(m[1]), entry.name, entry.read_text(encoding="utf-8"))
        for entry in root.iterdir()
        if (m := _MIGRATION_NAME.fullmatch(entry.name))
    ]
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n: {[m.name for m in found]}")
    return found


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], label: str) -> None:
    """Apply each migration newer than the file, each in its own transaction.

    The version bump is inside the transaction, so an interrupted or failing migration leaves
    the file exactly at the previous version, data intact.
    """
    current = schema_version(conn)
    known = max((m.version for m in migrations), default=0)
    if current > known:
        raise StoreError(
            f"state file {label} was written by a newer version "
            f"(schema {current}; this version knows {known})"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        # executescript runs a multi-statement script; it only commits a transaction left
        # open by earlier execute() calls, and there is none here.
        script = (
            f"BEGIN IMMEDIATE;\n{migration.sql}\n;\n"
            f"PRAGMA user_version = {migration.version:d};\nCOMMIT;"
        )
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(
                f"state file {label}: migration {migration.name} failed and was rolled back "
                f"(schema stays at {current}): {exc}"
            ) from exc
        current = migration.version
