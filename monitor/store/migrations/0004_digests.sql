-- Schema 4: when each digest channel last sent a complete digest, so a digest missed while the
-- daemon was down is sent once at start, and each digest covers the time since the last one.
-- This file runs inside one transaction with `PRAGMA user_version = 4`; no BEGIN/COMMIT here.

CREATE TABLE digests (
    channel TEXT PRIMARY KEY,
    last_at TEXT NOT NULL
);
