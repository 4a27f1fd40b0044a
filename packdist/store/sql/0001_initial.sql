-- packdist site schema, version 1.
CREATE TABLE site (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    name        TEXT NOT NULL,
    created_at  REAL NOT NULL
);

-- Chunks that are durably in the content library. Only these may be referenced.
CREATE TABLE chunks (
    digest  BLOB PRIMARY KEY,
    size    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE packages (
    id          TEXT PRIMARY KEY,           -- manifest digest (hex)
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    manifest    BLOB NOT NULL,              -- canonical form
    signature   BLOB NOT NULL,
    size        INTEGER NOT NULL,
    file_count  INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE servers (
    name         TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,      -- sha256 of the enrollment token
    created_at   REAL NOT NULL,
    last_seen    REAL,                      -- last heartbeat
    boot_id      TEXT,                      -- changes when the agent restarts
    disk_free    INTEGER,
    removed      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE server_groups (
    server  TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    grp     TEXT NOT NULL,
    PRIMARY KEY (server, grp)
);

-- What each server holds, as last verified by its agent.
CREATE TABLE server_packages (
    server       TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    package_id   TEXT NOT NULL REFERENCES packages(id),
    installed_at REAL NOT NULL,
    PRIMARY KEY (server, package_id)
);

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    package_id    TEXT NOT NULL REFERENCES packages(id),
    created_at    REAL NOT NULL,
    max_attempts  INTEGER,                  -- NULL: retry until installed or cancelled
    deadline      REAL,                     -- seconds after created_at; NULL: none
    options       TEXT NOT NULL DEFAULT '{}' -- flags of the job, read by every attempt
);

CREATE TABLE instructions (
    id               INTEGER PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs(id),
    server           TEXT NOT NULL REFERENCES servers(name),
    state            TEXT NOT NULL CHECK (state IN
                         ('pending','sending','installed','retrying','failed','cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    attempts_base    INTEGER NOT NULL DEFAULT 0,  -- attempts before the last operator retry
    last_error       TEXT,
    next_attempt_at  REAL NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    bytes_sent       INTEGER NOT NULL DEFAULT 0,
    bytes_total      INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL NOT NULL,
    finished_at      REAL,
    UNIQUE (job_id, server)
);
CREATE INDEX instructions_ready ON instructions (state, next_attempt_at);
CREATE INDEX instructions_server ON instructions (server, state);

CREATE TABLE events (
    id       INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    job_id   TEXT,
    server   TEXT,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX events_job ON events (job_id, id);
