"""Store test setup: the one place the PostgreSQL backend's tests are skipped."""

from __future__ import annotations

import importlib.util
import os

import pytest


def _postgres_skip_reason() -> str | None:
    if not os.environ.get("MONITOR_TEST_POSTGRES"):
        return "set MONITOR_TEST_POSTGRES to run PostgreSQL store tests"
    if importlib.util.find_spec("monitor.store.postgres") is None:
        return "no PostgreSQL store yet"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip every test of the "postgres" `new_store` param (tests/store/test_contract.py)
    before its fixtures run, when it cannot run.

    Here rather than in the fixture: pytest reports a skip raised by a fixture at each test's
    own line (one `-ra` summary line per test), and does not fold the skip marks of tests that
    are parametrized themselves either; a skip raised here has this line as its location, so
    pytest groups all of them into one summary line.
    """
    callspec = getattr(item, "callspec", None)
    if callspec is None or callspec.params.get("new_store") != "postgres":
        return
    reason = _postgres_skip_reason()
    if reason is not None:
        pytest.skip(reason)
