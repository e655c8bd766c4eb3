-- Schema 3: a delivery per destination within a channel (deliveries.target), and rule mutes.
-- This file runs inside one transaction with `PRAGMA user_version = 3`; no BEGIN/COMMIT here.

-- SQLite cannot change a UNIQUE constraint, so deliveries is rebuilt: create the new table,
-- copy the rows with their ids, drop the old one, rename the new one. Foreign keys are on
-- (and cannot be switched off inside a transaction); that is safe here because no table
-- references deliveries: dropping it deletes no parent row, and the rename rewrites no
-- other table. Orphans (an alert_id with no alert; only possible if foreign keys were off
-- at some point) are not copied: every read joins alerts, so they were unreadable anyway,
-- and they would fail the new table's foreign key check.
CREATE TABLE deliveries_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id        INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel         TEXT NOT NULL,
    -- The destination within the channel (a Telegram chat id); '' for the channel's only one.
    target          TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    lease_until     TEXT,
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    sent_at         TEXT,
    UNIQUE (alert_id, channel, target)
);

INSERT INTO deliveries_new (id, alert_id, channel, target, status, attempts, next_attempt_at,
                            lease_until, last_error, created_at, sent_at)
SELECT id, alert_id, channel, '', status, attempts, next_attempt_at,
       lease_until, last_error, created_at, sent_at
FROM deliveries
WHERE alert_id IN (SELECT id FROM alerts)
ORDER BY id;

-- Ids are never reused (a Message-ID is made from one): the new table must continue from the
-- highest id ever handed out, which the old table's sequence holds, not from the highest id
-- copied (pruning may have removed the newest rows). DROP TABLE deletes the old table's
-- sequence row and RENAME renames the new one's, so the value is moved over first.
DELETE FROM sqlite_sequence WHERE name = 'deliveries_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'deliveries_new', seq FROM sqlite_sequence WHERE name = 'deliveries';

DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (channel, status, created_at);
CREATE INDEX deliveries_age ON deliveries (status, created_at);

-- "/mute RULE 2h": the rule is muted while now < until; prune drops mutes that have ended.
CREATE TABLE mutes (
    rule       TEXT PRIMARY KEY,
    until      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
