"""What the command line shows a person: aligned tables, and progress while `monitor once` runs.

On a terminal, tables fit its width (long cells end in "…"), have a rule under the header and
use colour (none when `NO_COLOR` is set). Piped or redirected, a table is plain aligned text:
one line per row, never cut, no colour and no trailing spaces, for `grep`, `awk` and `head`.
The progress display appears only when standard output and standard error are both a terminal,
so a cron job's mail or a piped run never carries a progress bar.

Cells are always taken literally: a feed named `[World]` is not read as console markup.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from monitor.pipeline import PollOutcome

#: Width given to a console that is not a terminal: rows are never cut or wrapped.
UNLIMITED = 1 << 16
#: Narrowest a cuttable column is made on a narrow terminal ("…" included).
MIN_FLEXIBLE = 8
#: Columns between the cells of a row.
GAP = 2

Cell = str | Text


@dataclass(frozen=True, slots=True)
class Column:
    """A table column."""

    header: str
    #: May be cut short (ending in "…") to fit a narrow terminal; other columns never are.
    flexible: bool = False


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's default exits at once, with status 1; the command line decides instead.
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader of the output went away")


def console(file: TextIO | None = None) -> Console:
    """A console on `file` (default standard output), unlimited in width when not a terminal.

    Colour follows rich's detection: only on a terminal, never with `NO_COLOR`. A reader that
    went away raises BrokenPipeError, as `print` would.
    """
    out = _Console(
        file=file or sys.stdout,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=False,
    )
    if not out.is_terminal:
        out.width = UNLIMITED
    return out


def print_table(out: Console, columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> None:
    """Print an aligned table; see the module docstring for terminal versus piped output."""
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
    terminal = out.is_terminal
    grid = Table(
        box=box.SIMPLE_HEAD if terminal else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
        expand=False,
        # Two columns between cells: one of padding, and the box's blank divider (or a
        # second one of padding without a box).
        padding=(0, 1, 0, 0) if terminal else (0, 1),
    )
    limits = fit(columns, cells, out.width, GAP) if terminal else [None] * len(columns)
    for column, limit in zip(columns, limits, strict=True):
        grid.add_column(column.header, no_wrap=True, overflow="ellipsis", max_width=limit)
    for row in cells:
        grid.add_row(*row)
    with out.capture() as captured:
        out.print(grid)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    out.file.write(text + "\n")


def fit(
    columns: Sequence[Column], rows: Sequence[Sequence[Text]], width: int, gap: int
) -> list[int | None]:
    """Widest each column may be so the table fits `width`: None (as wide as its cells) for
    every column when it fits; else flexible columns share what the others leave, the
    narrower ones keeping their natural width, none below `MIN_FLEXIBLE`."""
    natural = [
        max([cell_len(c.header), *(row[i].cell_len for row in rows)]) for i, c in enumerate(columns)
    ]
    limits: list[int | None] = [None] * len(columns)
    flexible = [i for i, c in enumerate(columns) if c.flexible]
    fixed = sum(w for i, w in enumerate(natural) if i not in flexible)
    room = width - gap * (len(columns) - 1) - fixed
    if not flexible or sum(natural[i] for i in flexible) <= room:
        return limits
    for k, i in enumerate(sorted(flexible, key=natural.__getitem__)):
        share = max(room, 0) // (len(flexible) - k)
        limits[i] = max(MIN_FLEXIBLE, min(natural[i], share))
        room -= limits[i] or 0
    return limits


# --- progress -----------------------------------------------------------------------------------


def wants_progress(*, json_logs: bool) -> bool:
    """Whether `monitor once` shows progress: both standard streams are a terminal (not a
    dumb one) and logs are meant for people."""
    if json_logs or not (_isatty(sys.stdout) and _isatty(sys.stderr)):
        return False
    return not Console(file=sys.stderr).is_dumb_terminal


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # closed
        return False


class PollProgress:
    """A progress bar for `monitor once`: feeds polled of all, failures, new items, alerts;
    then "sending alerts" until the run ends. Call it with each poll's outcome.

    While it is shown, log lines and alerts printed on the console are written above the bar
    instead of through it; it disappears when done, leaving the summary.
    """

    def __init__(self, total: int, out: Console) -> None:
        self.total = total
        self.done = self.failed = self.new_items = self.alerts = 0
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tally]}"),
            TimeElapsedColumn(),
            console=out,
            transient=True,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._task = self._progress.add_task("polling feeds", total=total, tally=self.tally())

    def tally(self) -> str:
        return f"{self.failed} failed · {self.new_items} new · {self.alerts} alerts"

    def __call__(self, outcome: PollOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "error"
        self.new_items += outcome.new_items
        self.alerts += outcome.alerts
        description = "sending alerts" if self.done >= self.total else "polling feeds"
        self._progress.update(self._task, advance=1, tally=self.tally(), description=description)

    @contextmanager
    def shown(self) -> Iterator[PollProgress]:
        """Show the bar for the duration of the block; log lines go above it meanwhile."""
        before = sys.stderr
        with self._progress:
            # Handlers hold the stream they were made with; point those on standard error at
            # the bar's stand-in for it while the bar is drawn.
            moved = [
                h
                for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and h.stream is before
            ]
            for handler in moved:
                handler.setStream(sys.stderr)
            try:
                yield self
            finally:
                for handler in moved:
                    handler.setStream(before)
