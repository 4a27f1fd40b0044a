-- packdist site schema, version 12: child sites, whole sites of their own that report to
-- this one (their parent); their servers are rows of servers (servers.child).
CREATE TABLE child_sites (
    name        TEXT PRIMARY KEY,
    url         TEXT NOT NULL,              -- where this site reaches the child
    token_hash  TEXT NOT NULL UNIQUE,       -- sha256 of the child's enrollment token
    created_at  REAL NOT NULL,
    last_seen   REAL,                       -- the child's last report
    site_name   TEXT,                       -- what the child calls itself (site init --name)
    ca          TEXT,                       -- its certificate authority (PEM), as it reported
    bandwidth   REAL,                       -- bytes/s this site sends it at most, all streams together
    windows     TEXT NOT NULL DEFAULT '{}'  -- when the link may carry packages (core/schedule.py)
);

-- the child site a server belongs to: its servers are rows here too, named CHILD/SERVER,
-- kept from the child's reports (NULL: this site's own, enrolled here)
ALTER TABLE servers ADD COLUMN child TEXT REFERENCES child_sites(name);


-- where an attempt under way is, in its target's words ("at br: receiving from hq",
-- "fetching"): written with its progress, shown while it is sending
ALTER TABLE instructions ADD COLUMN phase TEXT
