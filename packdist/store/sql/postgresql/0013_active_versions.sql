-- packdist site schema, version 13: the active version of each package on each server
-- (packages/NAME/current there), and the one active before it, for a rollback
CREATE TABLE server_active (
    server      TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,              -- the package's name
    package_id  TEXT NOT NULL REFERENCES packages(id),
    previous_id TEXT REFERENCES packages(id), -- active before it (NULL: none was, as far as known)
    since       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (server, name)
)
