"""`monitor run` with config reloads: SIGHUP, or `--watch-config` noticing the file change.

A reload never stops the daemon on a bad config. The new file is loaded and validated while
the running daemon goes on; then a new `Daemon` is started on the same open store (its
channels opened, bot tokens checked). Only when all of that worked is the old daemon stopped
(polls and sends in flight get their grace period) and the new one run. Anything wrong is
logged with every problem found and the old config keeps running.

Seen items live in the store, so feeds, rules and channels added, removed or changed never
re-alert what was seen: a new rule applies to items that are new from then on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.errors import ConfigError, StoreError
from monitor.logs import register_secret
from monitor.metrics import Metrics
from monitor.models import Config, HttpSettings
from monitor.store import Store, open_store
from monitor.web import Site, WebServer

log = logging.getLogger("monitor.reload")

#: Seconds between looks at the config file with `--watch-config`.
WATCH_EVERY = 2.0


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What says a file changed: modification time, size and inode (an editor's rename)."""

    mtime_ns: int
    size: int
    inode: int


def _stamp(path: str) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)


class Supervisor:
    """Runs the daemon until `stop` is set, swapping in a new config on `request_reload()`.

    The process's metrics and its HTTP endpoint (the config's `http`, or `http` given here,
    which `--http` sets) belong to the Supervisor: they outlive reloads and always report on
    the daemon running now. A change of `http` in a reloaded file applies at the next start.
    """

    def __init__(
        self,
        config: Config,
        stop: asyncio.Event,
        *,
        watch: bool = False,
        http: HttpSettings | None = None,
    ) -> None:
        self.config = config
        self._stop = stop
        self._watch = watch
        self._http = http or config.http
        self._http_origin = "--http" if http is not None else "http"
        self.metrics = Metrics()
        self.site = Site(self.metrics)
        #: The HTTP server while `run` runs with one (`web.port` is the port it bound).
        self.web: WebServer | None = None
        self._reload = asyncio.Event()
        # The file as it was when (about when) `config` was read from it: a change made while
        # the first daemon starts is a change too.
        self._stamp = _stamp(config.path) if watch else None
        #: Reloads applied, and reloads refused (for tests and logs).
        self.reloads = 0
        self.refused = 0

    def request_reload(self) -> None:
        """Reload the config file at the next opportunity (safe from a signal handler)."""
        self._reload.set()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    async def run(self) -> None:
        """Open the store, run a daemon, and replace it on each valid reload, until stopped.

        ConfigError from the first start (e.g. a rejected bot token) propagates: `monitor run`
        exits 2. The store is opened once and outlives every reload.
        """
        async with AsyncExitStack() as stack:
            if self._http is not None:  # first: a port in use stops the start at once
                web = WebServer(self._http, self.site, origin=self._http_origin)
                self.web = await stack.enter_async_context(web)
            store = await stack.enter_async_context(open_store(self.config.state))
            daemon: Daemon | None = await self._start(self.config, store)
            watcher = asyncio.create_task(self._watch_file()) if self._watch else None
            try:
                while daemon is not None:
                    daemon = await self._generation(daemon, store)
            finally:
                self.site.daemon = None
                self.site.hand_over(None)
                if watcher is not None:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)

    async def _start(self, config: Config, store: Store) -> Daemon:
        daemon = Daemon(config, store=store, metrics=self.metrics)
        await daemon.__aenter__()
        return daemon

    async def _generation(self, daemon: Daemon, store: Store) -> Daemon | None:
        """Run `daemon` until stop (returns None) or a reload that worked (returns the new,
        started daemon). Either way `daemon` is stopped and closed before this returns."""
        wake = asyncio.Event()
        running = asyncio.create_task(daemon.run(wake))
        self.site.daemon = daemon
        successor: Daemon | None = None
        try:
            while successor is None:
                await self._next_event(running)
                if running.done() or self._stop.is_set():
                    break
                self._reload.clear()
                successor = await self._prepare(store)
        finally:
            # Handing over to a successor is no outage for /readyz (for up to its stall
            # limit, until the new daemon claims due feeds); stopping is.
            if successor is not None and not self._stop.is_set():
                self.site.hand_over(daemon)
            wake.set()
            await asyncio.wait([running])
            await daemon.__aexit__(None, None, None)
        failure = None if running.cancelled() else running.exception()
        if failure is not None:
            if successor is not None:
                await successor.__aexit__(None, None, None)
            raise failure
        if successor is not None:
            # Also when stopping now: the new feed set is stored, and the next start runs it.
            await self._hand_over(daemon.config, successor.config, store)
        if successor is not None and self._stop.is_set():
            await successor.__aexit__(None, None, None)
            return None
        if successor is not None:
            self.config = successor.config
            self.reloads += 1
            self.site.reloads = self.reloads
            self.metrics.reloads.labels("applied").inc()
            log.info(
                "config reloaded: %d feeds, %d rules, %d channels",
                len(successor.config.feeds),
                len(successor.config.rules),
                len(successor.config.channels),
            )
        return successor

    async def _hand_over(self, old: Config, new: Config, store: Store) -> None:
        """Undo what the old daemon did to the new feed set in its last moments.

        The new config's feeds were stored when its daemon started, while the old daemon still
        ran: a poll of a feed's old URL that finished after that (one in flight, or one the
        old daemon claimed meanwhile) recorded the feed as seeded, with the old URL's cache
        validators, or as dead, and the new URL's first fetch would then alert its whole
        backlog, or never happen. So feeds whose URL changed are reset again now that nothing
        polls them, and made due at once (a new URL takes effect now, not at the old
        schedule). A feed new to the old daemon that it claimed in that moment holds a lease
        it will never finish: every claim is dropped (nothing is in flight).
        """
        was = {f.name: f.url for f in old.feeds}
        moved = [f.name for f in new.feeds if was.get(f.name, f.url) != f.url]
        now = datetime.now(UTC)
        try:
            if moved:
                # The store resets a feed when its URL differs from the stored one: back to the
                # old URL, then to the new one.
                back = [replace(f, url=was[f.name]) if f.name in moved else f for f in new.feeds]
                await store.sync_feeds(back, now)
                await store.sync_feeds(new.feeds, now)
                await store.revive_feeds(moved, now)
            await store.release_feeds([f.name for f in new.feeds])
        except StoreError as exc:  # the new daemon meets the same trouble and says so
            log.error("state store: settling the new feed set failed: %s", exc)

    async def _next_event(self, running: asyncio.Task[None]) -> None:
        """Wait for a stop, a reload request, or the daemon ending on its own."""
        waits = [asyncio.create_task(e.wait()) for e in (self._stop, self._reload)]
        try:
            await asyncio.wait([running, *waits], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _prepare(self, store: Store) -> Daemon | None:
        """The new config's daemon, started; None (old config kept) when anything is wrong."""
        path = self.config.path
        try:
            config = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            self._refuse(f"invalid config, keeping the running one:\n{exc}")
            return None
        except OSError as exc:
            self._refuse(f"cannot read {path}, keeping the running config: {exc}")
            return None
        if config.state != self.config.state:
            self._refuse(
                "the new config names another state store; `state` only changes with a "
                "restart, keeping the running config"
            )
            return None
        for secret in config.secrets:
            register_secret(secret)
        if config.http != self.config.http:
            log.warning("http: a changed endpoint address applies at the next start")
        try:
            return await self._start(config, store)
        except ConfigError as exc:
            self._refuse(f"new config refused, keeping the running one:\n{exc}")
            return None
        except Exception as exc:
            log.exception("starting the new config failed; keeping the running one")
            self._refuse(f"{type(exc).__name__}: {exc}")
            return None

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.site.refused = self.refused
        self.metrics.reloads.labels("refused").inc()
        log.error("reload refused: %s", why)

    async def _watch_file(self) -> None:
        """Request a reload when the config file changes (checked every WATCH_EVERY s)."""
        path = self.config.path
        seen = self._stamp
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = _stamp(path)
            if now is not None and now != seen:
                seen = now
                log.info("config file changed: reloading")
                self.request_reload()
