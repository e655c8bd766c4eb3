"""Durable state: the Store contract and its backends, chosen by the config's `state` URL."""

from __future__ import annotations

from monitor.errors import StoreError
from monitor.store.memory import MemoryStore
from monitor.store.protocol import Pruned, Recorded, Store
from monitor.store.sqlite import SQLiteStore

__all__ = ["MemoryStore", "Pruned", "Recorded", "SQLiteStore", "Store", "open_store"]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def open_store(state: str, *, read_only: bool = False, shared: bool = False) -> Store:
    """The store a `state` URL names, not yet opened.

    "memory:" -> MemoryStore; "sqlite:///abs/path.db" -> SQLiteStore at /abs/path.db (the
    part after "sqlite://" is the absolute path, so "sqlite:////x.db" is /x.db as well);
    "postgresql://user@host:port/db" (or "postgres://") -> PostgresStore, for several workers
    on one database; "?schema=NAME" keeps its tables in that schema. Anything else ->
    StoreError. `read_only` opens the state beside a running daemon (SQLite: no instance
    lock; writes fail). `shared` opens it beside a running daemon for a short write (no
    instance lock, no migration); a memory store is never shared.
    """
    if state == "memory:":
        return MemoryStore()
    if state.startswith(_SQLITE_PREFIX):
        path = "/" + state.removeprefix(_SQLITE_PREFIX).lstrip("/")
        if path == "/" or path.endswith("/"):
            raise StoreError(f"state {state!r} names no file: use sqlite:///abs/path/state.db")
        return SQLiteStore(path, read_only=read_only, shared=shared)
    if state.startswith(_POSTGRES_PREFIXES):
        # Imported here: psycopg is only loaded by those who use it.
        from monitor.store.postgres import PostgresStore, split_state

        dsn, schema = split_state(state)
        return PostgresStore(dsn, schema=schema, read_only=read_only, shared=shared)
    # Only the scheme is shown: an unknown URL may carry a password.
    scheme = state.partition(":")[0] if "://" in state else state
    raise StoreError(
        f"unsupported state {scheme + ':...' if '://' in state else repr(scheme)}: use "
        "sqlite:///abs/path/state.db, postgresql://user@host/db or memory:"
    )
