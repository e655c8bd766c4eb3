-- Schema 6: the feed document's own refresh hint (RSS <ttl>, minutes), kept with the feed so a
-- 304 Not Modified, which carries no document, still honours it.
-- This file runs inside one transaction with `PRAGMA user_version = 6`; no BEGIN/COMMIT here.

ALTER TABLE feeds ADD COLUMN ttl INTEGER;
