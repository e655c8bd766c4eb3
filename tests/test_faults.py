"""Fault injection: the real daemon (`monitor run`, a child process) killed with SIGKILL at
random moments — starting up, fetching, parsing and recording, sending — and restarted, over
many rounds, while new stories keep being published. Nothing may be lost, nothing repeated
beyond the one message in flight per kill and channel, and the state file must stay sound.

Sized by MONITOR_FAULT_ROUNDS (default 12); MONITOR_FAULT_SEED picks the run (printed).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.faultrun import (
    CHAT,
    RECIPIENT,
    DaemonProcess,
    FaultBench,
    check_store,
    problems,
)

ROUNDS = max(1, int(os.environ.get("MONITOR_FAULT_ROUNDS", "12")))
SEED = int(os.environ.get("MONITOR_FAULT_SEED", "20261128"))
#: Safety net for waiting on an event the kill is aimed at (a fetch, a send); never asserted.
EVENT_WAIT = 20.0
#: Safety net for the last daemon to deliver everything.
FINAL_WAIT = 120.0
CHANNELS = {"desk": CHAT, "mail": RECIPIENT}

#: Where a kill is aimed, and how often.
MOMENTS = {"startup": 1, "anytime": 2, "fetch": 2, "record": 2, "telegram": 2, "email": 2}


def plan(rng: random.Random, rounds: int) -> list[str]:
    """Where each round's kill is aimed: every moment once (when there are rounds enough),
    in random order, then at random by weight."""
    every = rng.sample(list(MOMENTS), len(MOMENTS))
    rest = rng.choices(list(MOMENTS), weights=list(MOMENTS.values()), k=rounds)
    return (every + rest)[:rounds]


def publish_some(bench: FaultBench, rng: random.Random, count: int) -> None:
    assert bench.feeds is not None
    for _ in range(count):
        feed = rng.choice(bench.feeds.names)
        bench.publish(feed, matching=rng.random() < 0.75, pick=rng.randrange(12))


def kill_at(bench: FaultBench, daemon: DaemonProcess, rng: random.Random, moment: str) -> str:
    """Wait for `moment`, SIGKILL the daemon, and say what was in flight then."""
    assert bench.feeds is not None
    feeds, smtp = bench.feeds.gate, bench.smtp.gate
    came = True
    if moment == "startup":  # importing, opening the store, checking the channels
        time.sleep(rng.uniform(0.05, 1.5))
    elif moment == "anytime":
        time.sleep(rng.uniform(0.5, 5.0))
    elif moment == "fetch":  # the next feed answer is held; killed while it is
        hold = rng.uniform(0.5, 1.5)
        base = feeds.started
        feeds.delay_next(hold)
        came = feeds.wait(lambda: feeds.started > base, EVENT_WAIT)
        time.sleep(rng.uniform(0, hold * 0.8) if came else 0)
    elif moment == "record":  # just after a feed answered: parsing, matching, recording
        base = feeds.answered
        came = feeds.wait(lambda: feeds.answered > base, EVENT_WAIT)
        time.sleep(rng.uniform(0, 0.25) if came else 0)
    elif moment == "telegram":  # the next message is accepted, its answer held
        hold = rng.uniform(1.0, 2.0)
        base = len(bench.bot.sent)
        bench.bot.hang("sendMessage", hold)
        try:
            bench.bot.wait_for_sent(base + 1, timeout=EVENT_WAIT)
        except TimeoutError:
            came = False
        time.sleep(rng.uniform(0, hold * 0.8) if came else 0)
    elif moment == "email":  # the next email is recorded, the 250 held
        hold = rng.uniform(1.0, 2.0)
        base = smtp.started
        smtp.delay_next(hold)
        came = smtp.wait(lambda: smtp.started > base, EVENT_WAIT)
        time.sleep(rng.uniform(0, hold * 0.8) if came else 0)
    else:
        raise ValueError(moment)
    if not daemon.alive():
        raise AssertionError(
            f"daemon {daemon.pid} died by itself (exit {daemon.proc.returncode}) before the "
            f"kill aimed at {moment!r}:\n{daemon.tail()}"
        )
    in_flight = [
        what for what, busy in (("fetching", feeds.in_flight), ("emailing", smtp.in_flight)) if busy
    ]
    daemon.kill()
    feeds.clear_delays()
    smtp.clear_delays()
    label = moment if came else f"{moment}(nothing came)"
    return "+".join([label, *in_flight])


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_repeats_at_most_the_message_in_flight(
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    print(f"fault run: MONITOR_FAULT_SEED={SEED} MONITOR_FAULT_ROUNDS={ROUNDS}")
    moments: Counter[str] = Counter()
    with FaultBench(tmp_path, feeds=5) as bench:
        assert bench.feeds is not None
        for feed in bench.feeds.names:  # the backlog a first fetch remembers without alerting
            bench.publish(feed, matching=True, counted=False)
            bench.publish(feed, matching=False, counted=False)
        for round_no, moment in enumerate(plan(rng, ROUNDS)):
            if round_no:
                publish_some(bench, rng, rng.randint(0, 3))  # while the daemon is down
            daemon = bench.start()
            if round_no == 0:
                bench.wait_until(bench.all_seeded, "first fetch of every feed", daemon)
            publish_some(bench, rng, rng.randint(1, 3))  # while it runs
            moments[kill_at(bench, daemon, rng, moment)] += 1
        kills = ROUNDS
        rounds_took = time.monotonic() - began

        daemon = bench.start()
        publish_some(bench, rng, 2)
        bench.wait_until(bench.settled, "delivery of every story", daemon, timeout=FINAL_WAIT)
        status = daemon.terminate()
        assert status == 0, f"SIGTERM: exit {status}\n{bench.report()}"

        expected = bench.expected()
        telegram, email = bench.telegram(), bench.email()
        leftovers = sum(len(d.leftovers) for d in bench.daemons)
        print(
            f"fault run: seed {SEED}, {ROUNDS} rounds, {kills} kills, "
            f"{len(bench.stories)} stories, {len(expected)} alerts expected, "
            f"delivered telegram {len(telegram.stories() & expected)} "
            f"({len(telegram.messages)} messages) email {len(email.stories() & expected)} "
            f"({len(email.messages)} emails), duplicates telegram {telegram.duplicates()} "
            f"(from {telegram.repeated_messages()} messages) email {email.duplicates()} "
            f"(from {email.repeated_messages()} emails), "
            f"kill moments {dict(sorted(moments.items()))}, "
            f"processes left behind by killed daemons {leftovers}, "
            f"{time.monotonic() - began:.1f}s ({rounds_took:.1f}s of rounds)"
        )

        for name, got in (("telegram", telegram), ("email", email)):
            assert expected <= got.stories(), (
                f"{name}: alerts lost: {sorted(expected - got.stories())}\n{bench.report()}"
            )
            assert got.stories() <= expected, (
                f"{name}: stories alerted that must not be (backlog or no match): "
                f"{sorted(got.stories() - expected)}\n{bench.report()}"
            )
            assert got.repeated_messages() <= kills, (
                f"{name}: {got.repeated_messages()} messages repeated ({got.duplicates()} "
                f"duplicate alerts) after {kills} kills: {got.counts().most_common(10)}"
            )
        wrong = check_store(bench.db, expected, CHANNELS) + problems(bench)
        assert not wrong, "\n".join([*wrong, bench.report()])


def _latest_next_poll(bench: FaultBench) -> datetime:
    rows = bench.query("SELECT max(next_poll_at) FROM feeds")
    assert rows, "state file unreadable"
    return datetime.fromisoformat(rows[0][0].removesuffix("Z")).replace(tzinfo=UTC)


@pytest.mark.slow
def test_after_an_outage_there_is_no_flood(tmp_path: Path) -> None:
    began = time.monotonic()
    per_feed, feeds = 10, 3
    with FaultBench(tmp_path, feeds=feeds, jitter=0.0) as bench:
        assert bench.feeds is not None
        for feed in bench.feeds.names:
            bench.publish(feed, matching=True, counted=False)
        daemon = bench.start()
        bench.wait_until(bench.all_seeded, "first fetch of every feed", daemon)
        daemon.kill()
        for i in range(per_feed):  # published while the daemon is down
            for j, feed in enumerate(bench.feeds.names):
                bench.publish(feed, matching=True, pick=i + j)
        # A real outage: down until every feed is overdue, so the restart finds all of the
        # backlog at once (the schedule is kept in the state file).
        time.sleep(max(0.0, (_latest_next_poll(bench) - datetime.now(UTC)).total_seconds()))
        daemon = bench.start()
        bench.wait_until(bench.settled, "delivery of the backlog", daemon, timeout=FINAL_WAIT)
        status = daemon.terminate()
        assert status == 0, f"SIGTERM: exit {status}\n{bench.report()}"

        expected = bench.expected()
        telegram, email = bench.telegram(), bench.email()
        sends = len(bench.bot.calls("sendMessage"))
        print(
            f"outage: {len(expected)} alerts after the outage; telegram {sends} sendMessage "
            f"calls for {len(telegram.stories())} alerts, email {len(email.messages)} emails "
            f"for {len(email.stories())} alerts; processes left behind by the killed daemon "
            f"{len(bench.daemons[0].leftovers)}; {time.monotonic() - began:.1f}s"
        )
        assert len(expected) == per_feed * feeds
        for name, got in (("telegram", telegram), ("email", email)):
            counts = got.counts()
            assert set(counts) == expected, (
                f"{name}: missing {sorted(expected - set(counts))}, "
                f"unexpected {sorted(set(counts) - expected)}\n{bench.report()}"
            )
            assert set(counts.values()) == {1}, f"{name}: repeated: {counts.most_common(5)}"
        # Grouped: a handful of messages listing the headlines, not one message per story.
        assert sends <= len(expected) // bench.group_threshold, bench.report()
        assert len(email.messages) <= len(expected) // bench.group_threshold, bench.report()
        wrong = check_store(bench.db, expected, CHANNELS) + problems(bench)
        assert not wrong, "\n".join([*wrong, bench.report()])
