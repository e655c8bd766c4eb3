-- Schema 1: feeds' poll state, seen items, alerts and the delivery outbox.
-- Times are fixed-width ISO-8601 UTC text (see monitor/store/codec.py): text order is time order.
-- This file runs inside one transaction with `PRAGMA user_version = 1`; no BEGIN/COMMIT here.

CREATE TABLE feeds (
    name                 TEXT PRIMARY KEY,
    url                  TEXT NOT NULL,
    etag                 TEXT,
    last_modified        TEXT,
    next_poll_at         TEXT,
    lease_until          TEXT,
    last_polled_at       TEXT,
    last_success_at      TEXT,
    last_error           TEXT NOT NULL DEFAULT '',
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    seeded               INTEGER NOT NULL DEFAULT 0,
    items_seen           INTEGER NOT NULL DEFAULT 0,
    last_warning         TEXT NOT NULL DEFAULT '',
    -- 0 once the feed left the config: kept (with its items) but never claimed.
    active               INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX feeds_due ON feeds (active, next_poll_at);

-- Seen items: the primary key is what makes an item alert at most once.
CREATE TABLE items (
    feed         TEXT NOT NULL,
    key          TEXT NOT NULL,
    seen_at      TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    title        TEXT NOT NULL DEFAULT '',
    summary      TEXT NOT NULL DEFAULT '',
    link         TEXT NOT NULL DEFAULT '',
    author       TEXT NOT NULL DEFAULT '',
    tags_json    TEXT NOT NULL DEFAULT '[]',
    published    TEXT,
    text_pruned  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (feed, key)
);
CREATE INDEX items_seen_at ON items (seen_at);
CREATE INDEX items_last_seen_at ON items (last_seen_at);

-- Alerts copy the item text, so pending deliveries still render after the item is pruned.
-- (feed, item_key) is NOT unique: an item forgotten by retention and seen again is new again,
-- while its old alert may still be kept for its deliveries. The items key prevents repeats.
-- AUTOINCREMENT: ids are never reused, so an id (or a Message-ID made from one) stays unique.
CREATE TABLE alerts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    feed         TEXT NOT NULL,
    item_key     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    title        TEXT NOT NULL,
    link         TEXT NOT NULL,
    summary      TEXT NOT NULL,
    published    TEXT,
    seen_at      TEXT NOT NULL,
    matches_json TEXT NOT NULL
);
CREATE INDEX alerts_item ON alerts (feed, item_key);
CREATE INDEX alerts_created_at ON alerts (created_at);

-- The outbox: one row per alert and channel, written in the same transaction as the items.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id        INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_until     TEXT,
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    sent_at         TEXT,
    UNIQUE (alert_id, channel)
);
CREATE INDEX deliveries_due ON deliveries (channel, status, created_at);
CREATE INDEX deliveries_age ON deliveries (status, created_at);
