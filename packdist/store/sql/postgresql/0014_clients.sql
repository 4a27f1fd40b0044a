-- packdist site schema, version 14: clients, machines that are not distribution servers
-- and fetch packages into a directory of their own (packdist fetch) from the nearest
-- servers that hold them; and what they fetched, counted for /metrics
CREATE TABLE clients (
    name        TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,       -- sha256 of the client's token
    labels      TEXT NOT NULL DEFAULT '{}', -- e.g. {"site": "berlin"}: its location
    created_at  DOUBLE PRECISION NOT NULL,
    last_fetch  DOUBLE PRECISION                      -- its last sources request
);

-- per package and source (a server's name, or '' for the counts of the package itself):
-- sources requests, fetches reported complete, bytes reported from that source
CREATE TABLE client_totals (
    package_id  TEXT NOT NULL,
    source      TEXT NOT NULL,
    requests    INTEGER NOT NULL DEFAULT 0,
    fetches     INTEGER NOT NULL DEFAULT 0,
    bytes       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (package_id, source)
)
