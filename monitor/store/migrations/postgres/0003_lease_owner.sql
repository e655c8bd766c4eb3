-- Schema 3: claims have an owner. Each store object (each worker) claims under an id of its
-- own, and releases, or finishes a poll, only where the claim is still its own: a worker whose
-- lease ran out cannot clear the claim another worker took since. NULL: nobody claimed the row
-- (or a worker of schema 2 did). `sync_feeds` writes a value no store has when it takes a
-- claim away (the feed's URL changed): the poll of the old URL then writes nothing.

ALTER TABLE feeds ADD COLUMN lease_owner text;
ALTER TABLE deliveries ADD COLUMN lease_owner text;
