"""Store test setup: the backends every contract test runs on (`new_store`, `store`), and the
one place the PostgreSQL backend's tests are skipped.

A new backend joins by adding a param to `BACKENDS` and a branch to `make_store`."""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from monitor.store import MemoryStore, SQLiteStore, Store
from tests.store.factories import T0, spec

BACKENDS = ["memory", "sqlite", "postgres"]


def _postgres_skip_reason() -> str | None:
    if not os.environ.get("MONITOR_TEST_POSTGRES"):
        return "set MONITOR_TEST_POSTGRES to run PostgreSQL store tests"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip every test of the "postgres" `new_store` param (tests/store/test_contract*.py),
    and tests/store/test_postgres.py,
    before its fixtures run, when it cannot run.

    Here rather than in the fixture: pytest reports a skip raised by a fixture at each test's
    own line (one `-ra` summary line per test), and does not fold the skip marks of tests that
    are parametrized themselves either; a skip raised here has this line as its location, so
    pytest groups all of them into one summary line.
    """
    callspec = getattr(item, "callspec", None)
    postgres_only = item.path.name == "test_postgres.py"
    if not postgres_only and (callspec is None or callspec.params.get("new_store") != "postgres"):
        return
    reason = _postgres_skip_reason()
    if reason is not None:
        pytest.skip(reason)


def postgres_schema(tmp_path: Path) -> str:
    """The PostgreSQL schema of the test whose temporary directory is `tmp_path`: unique per
    test and per run (pytest numbers its base directories), the same for every store the test
    opens."""
    return "test_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:20]


@pytest.fixture(autouse=True)
def _drop_postgres_schema(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """After a test of the "postgres" backend, drop the schema its stores used."""
    yield
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("new_store") != "postgres":
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(os.environ["MONITOR_TEST_POSTGRES"], autocommit=True) as conn:
        name = sql.Identifier(postgres_schema(tmp_path))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))


def make_store(backend: str, tmp_path: Path) -> Store:
    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite":
        return SQLiteStore(tmp_path / "state.db")
    # Only reached when it can run: `pytest_runtest_setup` skips the param otherwise. Each
    # test gets a schema of its own (every store of the test reaches the same one), dropped
    # afterwards by `_drop_postgres_schema`.
    postgres = importlib.import_module("monitor.store.postgres")
    store: Store = postgres.PostgresStore(
        os.environ["MONITOR_TEST_POSTGRES"], schema=postgres_schema(tmp_path)
    )
    return store


@pytest.fixture(params=BACKENDS)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A factory of unopened stores of one backend (on one state location)."""
    backend: str = request.param
    return lambda: make_store(backend, tmp_path)


@pytest.fixture
async def store(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    """An open store with feeds "a" and "b" synced at T0."""
    opened = new_store()
    await opened.open()
    try:
        await opened.sync_feeds([spec("a"), spec("b")], T0)
        yield opened
    finally:
        await opened.close()
