"""Poll-cycle benchmark: the daemon's `once` pass against a naive poller, same feeds, same run.

Serves N synthetic feeds (M items each) from a loopback HTTP server and measures:

- cold cycle: first pass, every feed parsed and its items recorded;
- warm cycle, unchanged: every feed answers 304 to the daemon's conditional GET;
- warm cycle, 10% changed: a tenth of the feeds gained an item;

for the daemon (`monitor.daemon.Daemon.once`, SQLite state) and for a naive baseline that
fetches each feed in turn with a plain GET and parses it with feedparser on the event loop,
keeping seen ids in a set. Machines here are noisy: read the ratios, not the seconds.

    python bench/poll.py [--feeds 200] [--items 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import feedparser
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config import load_config  # noqa: E402
from monitor.daemon import Daemon  # noqa: E402
from tests.builders import rss  # noqa: E402
from tests.feedserver import FeedServer  # noqa: E402


def publish(server: FeedServer, feeds: int, items: int, generation: int, changed: float) -> None:
    for n in range(feeds):
        fresh = generation if n < feeds * changed else 0
        entries = [(f"f{n}-new{g}", f"Update {g} on talks") for g in range(fresh, 0, -1)]
        entries += [(f"f{n}-i{i}", f"Story {i} about markets") for i in range(items)]
        server.set(f"/f{n}.xml", rss(entries))


def write_config(folder: Path, server: FeedServer, feeds: int) -> Path:
    lines = [
        "state: state.db",
        "channels: {out: {type: jsonl, path: alerts.jsonl}}",
        "rules: [{name: talks, any: [talks]}]",
        "feeds:",
    ]
    lines += [f"  - {{name: f{n}, url: '{server.url(f'/f{n}.xml')}'}}" for n in range(feeds)]
    path = folder / "monitor.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def naive_pass(
    client: httpx.AsyncClient, server: FeedServer, feeds: int, seen: set[str]
) -> None:
    for n in range(feeds):
        response = await client.get(server.url(f"/f{n}.xml"))
        parsed = feedparser.parse(io.BytesIO(response.content))
        for entry in parsed.entries:
            key = entry.get("id") or entry.get("link")
            if key not in seen:
                seen.add(key)


async def measure(feeds: int, items: int) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}
    with FeedServer() as server, tempfile.TemporaryDirectory() as tmp:
        publish(server, feeds, items, 0, 0.0)
        config = load_config(write_config(Path(tmp), server, feeds))
        seen: set[str] = set()
        async with Daemon(config) as daemon, httpx.AsyncClient() as client:
            for label, generation, changed in (
                ("cold", 0, 0.0),
                ("warm, unchanged", 0, 0.0),
                ("warm, 10% changed", 1, 0.1),
            ):
                publish(server, feeds, items, generation, changed)
                start = time.perf_counter()
                await daemon.once()
                ours = time.perf_counter() - start
                start = time.perf_counter()
                await naive_pass(client, server, feeds, seen)
                naive = time.perf_counter() - start
                results[label] = (ours, naive)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs = [asyncio.run(measure(args.feeds, args.items)) for _ in range(args.rounds)]
    print(f"poll cycle: {args.feeds} feeds x {args.items} items, median of {args.rounds} runs")
    print(f"{'cycle':<20}{'monitor (s)':>12}{'naive (s)':>12}{'naive/monitor':>15}")
    for label in runs[0]:
        ours = statistics.median(r[label][0] for r in runs)
        naive = statistics.median(r[label][1] for r in runs)
        print(f"{label:<20}{ours:>12.3f}{naive:>12.3f}{naive / ours:>14.2f}x")


if __name__ == "__main__":
    main()
