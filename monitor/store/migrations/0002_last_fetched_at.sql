-- Schema 2: when each feed last returned a document that was parsed (a 200, not a 304).
-- Retention forgets an item only when it was missing from that document too, so the items of
-- a feed answering 304 (or failing) for a long time are kept however long that lasts.
-- This file runs inside one transaction with `PRAGMA user_version = 2`; no BEGIN/COMMIT here.

ALTER TABLE feeds ADD COLUMN last_fetched_at TEXT;

-- Existing feeds: the latest last-seen time of their items. Every 200 refreshes the last-seen
-- time of the items it lists once it is a day old, so this is never later than the last 200
-- and every item that 200 listed is within a day of it: none of them can be pruned. (Their
-- last_success_at would be later for a feed answering 304, and forget exactly those items.)
-- Feeds without items stay NULL: nothing of theirs to keep.
UPDATE feeds SET last_fetched_at = (
    SELECT max(items.last_seen_at) FROM items WHERE items.feed = feeds.name
);
