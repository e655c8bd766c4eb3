-- Schema 2: the workers using this database, each with the digest of the config file it runs,
-- so workers running different configs (feeds, rules, channels) are noticed and reported.

CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
);
