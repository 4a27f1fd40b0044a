-- packdist site schema, version 16: what a newcomer could not see.
-- site_workers: each `site serve` process and when it last said it runs (written with its
-- batched heartbeat writes, every few seconds), so that commands can say that no site
-- server runs rather than promise an attempt that nothing will make.
CREATE TABLE site_workers (
    worker     TEXT PRIMARY KEY,            -- host:pid
    started_at REAL NOT NULL,
    last_seen  REAL NOT NULL,
    stopped_at REAL                         -- stopped cleanly (NULL: running, or killed)
);

-- servers.offline_at: when the site recorded that the server went offline (its event
-- written once); cleared when it comes back
ALTER TABLE servers ADD COLUMN offline_at REAL
