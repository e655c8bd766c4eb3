-- Schema 4: indexes for the queries every worker runs all the time.

-- claim_deliveries / due_deliveries read deliveries never tried (oldest first) and deliveries
-- whose retry time has come, as two index scans: a long queue waiting for its retries is no
-- longer walked on every claim.
CREATE INDEX deliveries_fresh ON deliveries (channel, created_at, id)
    WHERE status = 'pending' AND next_attempt_at IS NULL;
CREATE INDEX deliveries_retry ON deliveries (channel, next_attempt_at)
    WHERE status = 'pending' AND next_attempt_at IS NOT NULL;
DROP INDEX deliveries_due;
-- outbox_stats, pending_count, pending_by_target, claimed_count.
CREATE INDEX deliveries_channel_status ON deliveries (channel, status);

-- The text prune (and recent_items) only look at items whose text is still kept.
CREATE INDEX items_text_kept ON items (seen_at) WHERE NOT text_pruned;
DROP INDEX items_seen_at;

-- Feeds are updated on every poll: room on each page for the new row version keeps those
-- updates HOT (no index entry written). Takes effect as pages are rewritten.
ALTER TABLE feeds SET (fillfactor = 70);
