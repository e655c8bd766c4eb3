-- Schema 8: claims have an owner (the store object that claimed), so that a release or a
-- finished poll acts only on the claim of the store doing it, and `sync_feeds` can take a
-- claim away when a feed's URL changes (see Store.record_items). NULL: nobody claimed it.
-- This file runs inside one transaction with `PRAGMA user_version = 8`; no BEGIN/COMMIT here.

ALTER TABLE feeds ADD COLUMN lease_owner TEXT;
ALTER TABLE deliveries ADD COLUMN lease_owner TEXT;
