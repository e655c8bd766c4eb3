-- Schema 7: the processes using this state, each with the digest of the config file it runs,
-- so workers running different configs are noticed (one row for a SQLite daemon).
-- This file runs inside one transaction with `PRAGMA user_version = 7`; no BEGIN/COMMIT here.

CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    started_at TEXT NOT NULL,
    seen_at TEXT NOT NULL
);
