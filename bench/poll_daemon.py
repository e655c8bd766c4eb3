"""The daemon side of the poll benchmark, in its own process so its peak memory is its own.

    python bench/poll_daemon.py CONFIG --db STATE.db --expect N [--mode run|once] [--profile OUT]
    python bench/poll_daemon.py CONFIG --shared      # one of several workers (PostgreSQL)

Opens `Daemon(config)` (untimed: config, store, sync, workers), marks every feed due, then
times one full cycle:

- `run` (default): `Daemon.run`, the way the daemon really runs: the scheduler claims due
  feeds into its bounded pool; the cycle ends when N polls have finished;
- `once`: `Daemon.once()` (`monitor once`: every feed, then one dispatch pass).

Prints one JSON line: seconds, poll outcomes, new items, alerts, pending deliveries, and the
peak RSS (VmHWM) of this process and of each parse worker.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import dataclasses
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor import logs  # noqa: E402
from monitor.config import load_config  # noqa: E402
from monitor.daemon import Daemon  # noqa: E402
from monitor.errors import ConfigError  # noqa: E402
from monitor.models import Config  # noqa: E402
from monitor.pipeline import PollOutcome  # noqa: E402


def load(path: Path) -> tuple[Config, str]:
    """The config; `poll.host_interval: 0` applied by hand if the schema does not know it yet."""
    try:
        return load_config(path), "config"
    except ConfigError as exc:
        if "host_interval" not in str(exc):
            raise
    text = path.read_text(encoding="utf-8").replace(", host_interval: 0", "")
    stripped = path.with_suffix(".nohost.yaml")
    stripped.write_text(text, encoding="utf-8")
    config = load_config(stripped)
    poll = config.poll
    if hasattr(poll, "host_interval"):
        poll = dataclasses.replace(poll, host_interval=timedelta(0))  # type: ignore[call-arg]
    return dataclasses.replace(config, poll=poll), "patched"


def make_all_due(db: Path | None, state: str) -> int:
    if state.startswith(("postgresql://", "postgres://")):
        return make_all_due_pg(state)
    assert db is not None, "--db is needed for a SQLite state"
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "UPDATE feeds SET next_poll_at = '2000-01-01T00:00:00.000000Z', lease_until = NULL"
        ).rowcount


def make_all_due_pg(state: str) -> int:
    """Every feed due at once, in the PostgreSQL state (several workers share it)."""
    import psycopg

    from monitor.store.postgres import split_state

    dsn, schema = split_state(state)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if schema:
            conn.execute(f'SET search_path TO "{schema}"')
        return conn.execute(
            "UPDATE feeds SET next_poll_at = '2000-01-01T00:00:00Z', lease_until = NULL"
        ).rowcount


def hwm_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads, summed by kind (name without its number)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    kinds: dict[str, float] = collections.defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        name = names.get(int(task.name), "gone")
        kind = re.sub(r"[-_ ]?\d+(_\d+)?$", "", name.split(" (")[0]) or name
        kinds[kind] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return dict(kinds)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the forkserver and the parse workers)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


async def serve(config: Config) -> dict[str, object]:
    """One of several workers on a shared (PostgreSQL) state: open the daemon, say READY on
    stdout, run from GO to STOP (lines on stdin); the caller makes the feeds due and times
    the cycle from the state. Reports this worker's polls and CPU."""
    outcomes: collections.Counter[str] = collections.Counter()
    loop = asyncio.get_running_loop()
    async with Daemon(config) as daemon:
        chained = daemon.scheduler._on_done

        def on_done(outcome: PollOutcome) -> None:
            outcomes[outcome.status] += 1
            if chained is not None:
                chained(outcome)

        daemon.scheduler._on_done = on_done
        print("READY", flush=True)
        assert (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "GO"
        cpu_before = cpu_seconds() + sum(cpu_seconds(p) for p in descendants(os.getpid()))
        stop = asyncio.Event()
        running = asyncio.create_task(daemon.run(stop))
        await loop.run_in_executor(None, sys.stdin.readline)  # STOP (or EOF)
        cpu = cpu_seconds() + sum(cpu_seconds(p) for p in descendants(os.getpid()))
        stop.set()
        await running
    return {
        "outcomes": dict(outcomes),
        "cpu": round(cpu - cpu_before, 2),
        "claims": daemon.scheduler.claims,
    }


async def measure(config: Config, db: Path | None, expect: int, mode: str) -> dict[str, object]:
    outcomes: collections.Counter[str] = collections.Counter()
    totals = {"new": 0, "alerts": 0}
    finished = asyncio.Event()
    marks: list[float] = []

    def seen(outcome: PollOutcome) -> None:
        marks.append(time.perf_counter())
        outcomes[outcome.status] += 1
        totals["new"] += outcome.new_items
        totals["alerts"] += outcome.alerts
        if sum(outcomes.values()) >= expect:
            finished.set()

    async with Daemon(config) as daemon:
        due = make_all_due(db, config.state)
        chained = daemon.scheduler._on_done  # the daemon's own hook (it kicks dispatch)

        def on_done(outcome: PollOutcome) -> None:
            seen(outcome)
            if chained is not None:
                chained(outcome)

        daemon.scheduler._on_done = on_done
        helpers = descendants(os.getpid())
        cpu_before = {pid: cpu_seconds(pid) for pid in helpers} | {0: cpu_seconds()}
        threads_before = thread_cpu()
        start = time.perf_counter()
        if mode == "once":
            report = await daemon.once()
            seconds = time.perf_counter() - start
            for outcome in report.polls:
                seen(outcome)
        else:
            stop = asyncio.Event()
            running = asyncio.create_task(daemon.run(stop))
            await finished.wait()
            seconds = time.perf_counter() - start
            stop.set()
            await running
        cpu_main = cpu_seconds() - cpu_before[0]
        threads = {
            kind: round(cpu - threads_before.get(kind, 0.0), 2)
            for kind, cpu in thread_cpu().items()
            if cpu - threads_before.get(kind, 0.0) >= 0.05
        }
        alive = descendants(os.getpid())
        cpu_workers = sum(cpu_seconds(pid) - cpu_before.get(pid, 0.0) for pid in alive)
        pending = await daemon.store.pending_count()
        workers = {pid: hwm_kb(pid) for pid in alive}
    return {
        "mode": mode,
        "seconds": seconds,
        "due": due,
        "outcomes": dict(outcomes),
        "new": totals["new"],
        "alerts": totals["alerts"],
        "pending": pending,
        "hwm_kb": hwm_kb(),
        # CPU seconds used during the cycle: this process (all threads), and its workers.
        "cpu_main": round(cpu_main, 2),
        "cpu_workers": round(cpu_workers, 2),
        "cpu_threads": threads,
        "claims": getattr(daemon.scheduler, "claims", None),
        # When the first, the median and the last poll finished (seconds from the start).
        "progress": [round(marks[i] - start, 3) for i in (0, len(marks) // 2, -1)] if marks else [],
        "children_hwm_kb": sorted(workers.values(), reverse=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--db", type=Path, help="the SQLite state file (to make feeds due)")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument(
        "--shared", action="store_true", help="one of several workers: READY, GO, STOP"
    )
    parser.add_argument("--mode", choices=["run", "once"], default="run")
    parser.add_argument("--log", type=Path, help="daemon log file (INFO, as `monitor run`)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the whole process")
    args = parser.parse_args()
    stream = args.log.open("a", encoding="utf-8") if args.log else open(os.devnull, "w")  # noqa: SIM115
    logs.setup("info", "text", stream=stream)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    config, how = load(args.config)
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    if args.shared:
        result = asyncio.run(serve(config))
    else:
        result = asyncio.run(measure(config, args.db, args.expect, args.mode))
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    result["host_interval"] = how
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
