-- Schema 5: feed health (a run of failures, dead feeds, posting cadence, the last notice sent to
-- the admin channel) and a second identity for items, so a feed that rewrites every guid does
-- not alert the same stories again.
-- This file runs inside one transaction with `PRAGMA user_version = 5`; no BEGIN/COMMIT here.

ALTER TABLE feeds ADD COLUMN failing_since TEXT;
ALTER TABLE feeds ADD COLUMN dead_since TEXT;
ALTER TABLE feeds ADD COLUMN dead_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE feeds ADD COLUMN last_new_at TEXT;
-- Seconds, a moving average of the time between polls that found new items.
ALTER TABLE feeds ADD COLUMN cadence REAL;
ALTER TABLE feeds ADD COLUMN notice TEXT NOT NULL DEFAULT '';

-- A feed failing now has failed since at least its last attempt; better late than never dead.
UPDATE feeds SET failing_since = last_polled_at WHERE consecutive_failures > 0;

-- Link-and-title fingerprint (monitor/sources/identity.py `fingerprint`); NULL for items
-- stored before this version, and for items without a link or a title.
ALTER TABLE items ADD COLUMN alt TEXT;
CREATE INDEX items_alt ON items (feed, alt) WHERE alt IS NOT NULL;
