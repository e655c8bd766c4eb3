"""Smoke test of the poll benchmark's parts (bench/poll.py): its feed server process answers
conditional GETs and moves feeds to a new generation, and the naive baseline's state built
by construction equals what a real naive pass leaves. The benchmark itself takes minutes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import poll  # bench/poll.py


def test_feed_server_conditional_get_and_generations() -> None:
    server = poll.Server(20)
    try:
        with httpx.Client() as client:
            first = client.get(server.url(7))
            assert first.status_code == 200
            assert first.text.count("<item>") == 50
            etag = first.headers["etag"]
            again = client.get(server.url(7), headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert server.control("change?start=5&stop=10")["changed"] == 5
            changed = client.get(server.url(7), headers={"If-None-Match": etag})
            assert changed.status_code == 200
            assert changed.text.count("<item>") == 50
            assert "urn:bench:7:50<" in changed.text  # the one new item
            assert server.control("stats")["not_modified"] == 1

            naive = poll.Naive()
            done = asyncio.run(poll.naive_cycle([server.url(n) for n in range(20)], naive))
            assert (done.ok, done.not_modified, done.new) == (20, 0, 1000)
            built = poll.naive_primed(server, 20)  # all at generation 0
            for n in range(20):
                same = naive.etags[server.url(n)] == built.etags[server.url(n)]
                assert same == (not 5 <= n < 10)  # feeds 5-9 are a generation ahead
    finally:
        server.close()
