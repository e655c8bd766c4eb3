-- PostgreSQL schema 1: the same state as SQLite's schema 5 (feeds' poll state and health, seen
-- items, alerts, the delivery outbox, mutes, digest times), with timestamptz times and leases
-- for several workers. monitor/store/postgres_schema.py runs this file inside one transaction,
-- under an advisory lock, together with the bump of monitor_schema.version; no BEGIN/COMMIT.

CREATE TABLE feeds (
    name                 text PRIMARY KEY,
    url                  text NOT NULL,
    etag                 text,
    last_modified        text,
    next_poll_at         timestamptz,
    -- A worker's claim holds while now < lease_until (see Store.claim_due_feeds).
    lease_until          timestamptz,
    last_polled_at       timestamptz,
    last_success_at      timestamptz,
    last_error           text NOT NULL DEFAULT '',
    consecutive_failures integer NOT NULL DEFAULT 0,
    seeded               boolean NOT NULL DEFAULT false,
    items_seen           bigint NOT NULL DEFAULT 0,
    last_warning         text NOT NULL DEFAULT '',
    -- false once the feed left the config: kept (with its items) but never claimed.
    active               boolean NOT NULL DEFAULT true,
    -- The last fetch that parsed a document (a 200, not a 304): retention counts from it.
    last_fetched_at      timestamptz,
    failing_since        timestamptz,
    dead_since           timestamptz,
    dead_reason          text NOT NULL DEFAULT '',
    last_new_at          timestamptz,
    -- Seconds, a moving average of the time between polls that found new items.
    cadence              double precision,
    notice               text NOT NULL DEFAULT '',
    -- RSS <ttl> (minutes) of the last document fetched, if it had one.
    ttl                  integer
);
-- The due-time index every claim walks: only feeds that can be claimed at all.
CREATE INDEX feeds_due ON feeds (next_poll_at, name COLLATE "C") WHERE active AND dead_since IS NULL;

-- Seen items: the primary key is what makes an item alert at most once.
CREATE TABLE items (
    feed         text NOT NULL,
    key          text NOT NULL,
    seen_at      timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    title        text NOT NULL DEFAULT '',
    summary      text NOT NULL DEFAULT '',
    link         text NOT NULL DEFAULT '',
    author       text NOT NULL DEFAULT '',
    tags_json    text NOT NULL DEFAULT '[]',
    published    timestamptz,
    text_pruned  boolean NOT NULL DEFAULT false,
    -- Link-and-title fingerprint (monitor/sources/identity.py `fingerprint`).
    alt          text,
    -- Insertion order, the tie-break between items seen at the same instant.
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (feed, key)
);
CREATE INDEX items_seen_at ON items (seen_at);
CREATE INDEX items_last_seen_at ON items (last_seen_at);
CREATE INDEX items_alt ON items (feed, alt) WHERE alt IS NOT NULL;

-- Alerts copy the item text, so pending deliveries still render after the item is pruned.
-- Identity ids are never reused, so an id (or a Message-ID made from one) stays unique.
CREATE TABLE alerts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    feed         text NOT NULL,
    item_key     text NOT NULL,
    created_at   timestamptz NOT NULL,
    title        text NOT NULL,
    link         text NOT NULL,
    summary      text NOT NULL,
    published    timestamptz,
    seen_at      timestamptz NOT NULL,
    matches_json text NOT NULL
);
CREATE INDEX alerts_item ON alerts (feed, item_key);
CREATE INDEX alerts_created_at ON alerts (created_at);

-- The outbox: one row per alert, channel and target, written with the items.
CREATE TABLE deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel         text NOT NULL,
    -- The destination within the channel (a Telegram chat id); '' for the channel's only one.
    target          text NOT NULL DEFAULT '',
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    lease_until     timestamptz,
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    sent_at         timestamptz,
    UNIQUE (alert_id, channel, target)
);
-- The claim index: a channel's pending deliveries, oldest first.
CREATE INDEX deliveries_due ON deliveries (channel, created_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_age ON deliveries (status, created_at);

-- "/mute RULE 2h": the rule is muted while now < until; prune drops mutes that have ended.
CREATE TABLE mutes (
    rule       text PRIMARY KEY,
    until      timestamptz NOT NULL,
    created_at timestamptz NOT NULL
);

-- When each digest channel last sent a complete digest.
CREATE TABLE digests (
    channel text PRIMARY KEY,
    last_at timestamptz NOT NULL
);
