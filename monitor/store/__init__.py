"""Durable state: the Store contract and its backends, chosen by the config's `state` URL."""

from __future__ import annotations

from monitor.errors import StoreError
from monitor.store.memory import MemoryStore
from monitor.store.protocol import Pruned, Recorded, Store
from monitor.store.sqlite import SQLiteStore

__all__ = ["MemoryStore", "Pruned", "Recorded", "SQLiteStore", "Store", "open_store"]

_SQLITE_PREFIX = "sqlite:///"


def open_store(state: str, *, read_only: bool = False, shared: bool = False) -> Store:
    """The store a `state` URL names, not yet opened.

    "memory:" -> MemoryStore; "sqlite:///abs/path.db" -> SQLiteStore at /abs/path.db (the
    part after "sqlite://" is the absolute path, so "sqlite:////x.db" is /x.db as well).
    Anything else -> StoreError. `read_only` opens a SQLite file beside a running daemon
    (no instance lock; writes fail). `shared` opens it beside a running daemon for a short
    write (no instance lock, no migration); a memory store is never shared.
    """
    if state == "memory:":
        return MemoryStore()
    if state.startswith(_SQLITE_PREFIX):
        path = "/" + state.removeprefix(_SQLITE_PREFIX).lstrip("/")
        if path == "/" or path.endswith("/"):
            raise StoreError(f"state {state!r} names no file: use sqlite:///abs/path/state.db")
        return SQLiteStore(path, read_only=read_only, shared=shared)
    raise StoreError(f"unsupported state {state!r}: use sqlite:///abs/path/state.db or memory:")
