-- packdist site schema, version 16: what a newcomer could not see.
-- site_workers: each `site serve` process and when it last said it runs (written with its
-- batched heartbeat writes, every few seconds), so that commands can say that no site
-- server runs rather than promise an attempt that nothing will make.
CREATE TABLE site_workers (
    worker     TEXT PRIMARY KEY,            -- host:pid
    started_at DOUBLE PRECISION NOT NULL,
    last_seen  DOUBLE PRECISION NOT NULL,
    stopped_at DOUBLE PRECISION                         -- stopped cleanly (NULL: running, or killed)
);

-- servers.offline_at: when the site recorded that the server went offline (its event
-- written once); cleared when it comes back
ALTER TABLE servers ADD COLUMN offline_at DOUBLE PRECISION
;

-- refused_agents: the latest agent refused for a wrong or revoked token, of each server
-- it could be told to be (the name it claimed, or its address and port being the
-- server's URL); shown by server list, job show and the dashboard
CREATE TABLE refused_agents (
    server   TEXT PRIMARY KEY REFERENCES servers(name) ON DELETE CASCADE,
    at       DOUBLE PRECISION NOT NULL,
    remote   TEXT NOT NULL,                 -- the address it called from
    reason   TEXT NOT NULL
)
