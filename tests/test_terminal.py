"""Tables and progress as a person sees them: on a (forced) terminal of a given width, and
piped; content and shape are checked, not exact spacing."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from monitor import terminal
from monitor.pipeline import PollOutcome
from monitor.terminal import Column, PollProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLUMNS = (Column("FEED", flexible=True), Column("STATUS"), Column("ERROR", flexible=True))
LONG_NAME = "The Very Long Name Of A Regional News Service [Politics]"
LONG_ERROR = "connection refused by https://example.org/a/very/long/path/to/the/feed.xml"
ROWS = [
    [LONG_NAME, Text("ok", style="green"), ""],
    ["wire", "failing 3 h", LONG_ERROR],
]


@pytest.fixture(autouse=True)
def _no_colour_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


def on_terminal(width: int) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=width, color_system="standard"), buffer


def test_piped_tables_are_plain_whole_rows_without_trailing_spaces() -> None:
    buffer = io.StringIO()
    out = terminal.console(buffer)
    assert not out.is_terminal
    terminal.print_table(out, COLUMNS, ROWS)
    text = buffer.getvalue()
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert len(lines) == 3  # a header and one line per row: nothing wrapped
    assert lines[0].split() == ["FEED", "STATUS", "ERROR"]
    assert lines[1].startswith(LONG_NAME)  # taken literally: "[Politics]" is not markup
    assert lines[2].endswith(LONG_ERROR)  # never cut
    assert all(line == line.rstrip() for line in lines)
    # Aligned: each column starts at the same place on every line.
    assert lines[1].index("ok") == lines[2].index("failing") == lines[0].index("STATUS")


@pytest.mark.parametrize("width", [40, 60, 100])
def test_on_a_narrow_terminal_long_cells_are_cut_and_short_ones_kept(width: int) -> None:
    out, buffer = on_terminal(width)
    terminal.print_table(out, COLUMNS, ROWS)
    text = buffer.getvalue()
    assert ANSI.search(text)  # bold header, green "ok"
    lines = ANSI.sub("", text).splitlines()
    assert all(cell_len(line) <= width for line in lines)
    assert lines[0].split() == ["FEED", "STATUS", "ERROR"]
    assert set(lines[1]) == {"─"}  # a rule under the header
    assert "failing 3 h" in lines[3]  # a fixed column is never cut
    assert "…" in lines[2]
    assert "…" in lines[3]
    assert lines[2].startswith("The Very")


def test_no_color_keeps_the_layout_without_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out, buffer = on_terminal(100)
    terminal.print_table(out, COLUMNS, ROWS)
    assert "\x1b[32m" not in buffer.getvalue()  # no green
    assert "─" in buffer.getvalue()


def test_console_follows_the_terminal_width_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "50")
    out = terminal.console(io.StringIO())
    assert out.is_terminal
    assert out.width == 50
    monkeypatch.delenv("FORCE_COLOR")
    assert terminal.console(io.StringIO()).width == terminal.UNLIMITED


def test_fit_shares_the_room_left_by_fixed_columns() -> None:
    rows = [[Text("x" * 30), Text("failing 3 h"), Text("y" * 50)]]
    assert terminal.fit(COLUMNS, rows, 200, 3) == [None, None, None]  # fits as it is
    limits = terminal.fit(COLUMNS, rows, 60, 3)
    assert limits[1] is None
    assert limits[0] is not None
    assert limits[2] is not None
    assert limits[0] + 11 + limits[2] + 2 * 3 <= 60
    # The narrower flexible column keeps its width when the wider one can give way.
    assert terminal.fit(COLUMNS, [[Text("short"), Text("ok"), Text("y" * 80)]], 60, 3)[0] == 8
    assert terminal.fit(COLUMNS, rows, 10, 3)[0] == terminal.MIN_FLEXIBLE  # never below


@pytest.fixture
def root_handler() -> Iterator[logging.StreamHandler[io.StringIO]]:
    """A root handler writing to a stand-in for standard error, removed afterwards."""
    handler = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def test_progress_counts_polls_then_shows_sending(
    monkeypatch: pytest.MonkeyPatch, root_handler: logging.StreamHandler[io.StringIO]
) -> None:
    stderr = root_handler.stream
    monkeypatch.setattr("sys.stderr", stderr)
    out, buffer = on_terminal(100)
    progress = PollProgress(3, out)
    with progress.shown():
        assert root_handler.stream is not stderr  # log lines go above the bar meanwhile
        logging.getLogger("monitor.test").warning("poll failed: HTTP 500")
        progress(PollOutcome("a", "ok", new_items=2, alerts=1))
        progress(PollOutcome("b", "error", error="HTTP 500"))
        assert progress.tally() == "1 failed · 2 new · 1 alerts"
        progress(PollOutcome("c", "not_modified"))
    assert root_handler.stream is stderr  # put back
    assert (progress.done, progress.failed, progress.new_items, progress.alerts) == (3, 1, 2, 1)
    shown = ANSI.sub("", buffer.getvalue())
    assert "polling feeds" in shown
    assert "poll failed: HTTP 500" in shown  # the log line was written through the display
    assert stderr.getvalue() == ""


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_when_both_streams_are_a_terminal_and_logs_are_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    for stdout, stderr in ((io.StringIO(), Tty()), (Tty(), io.StringIO())):
        monkeypatch.setattr("sys.stdout", stdout)
        monkeypatch.setattr("sys.stderr", stderr)
        assert not terminal.wants_progress(json_logs=False)
    monkeypatch.setattr("sys.stdout", Tty())
    monkeypatch.setattr("sys.stderr", Tty())
    assert terminal.wants_progress(json_logs=False)
    assert not terminal.wants_progress(json_logs=True)
    monkeypatch.setenv("TERM", "dumb")
    assert not terminal.wants_progress(json_logs=False)
