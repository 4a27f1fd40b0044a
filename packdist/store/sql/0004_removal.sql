-- packdist site schema, version 4: removal jobs.
-- jobs.action: what every instruction of the job does on its server: 'install' the package,
-- or 'remove' it. A removal instruction ends 'removed' (new state): SQLite cannot widen a
-- CHECK constraint in place, so the instructions table is rebuilt with the same columns.
ALTER TABLE jobs ADD COLUMN action TEXT NOT NULL DEFAULT 'install'
    CHECK (action IN ('install', 'remove'));
CREATE TABLE instructions_v4 (
    id               INTEGER PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs(id),
    server           TEXT NOT NULL REFERENCES servers(name),
    state            TEXT NOT NULL CHECK (state IN
                         ('pending','sending','installed','removed','retrying','failed',
                          'cancelled')),
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
    claimed_at       REAL,
    UNIQUE (job_id, server)
);
INSERT INTO instructions_v4 (id, job_id, server, state, attempts, attempts_base, last_error,
    next_attempt_at, lease_owner, lease_expires_at, bytes_sent, bytes_total, updated_at,
    finished_at, claimed_at)
SELECT id, job_id, server, state, attempts, attempts_base, last_error, next_attempt_at,
    lease_owner, lease_expires_at, bytes_sent, bytes_total, updated_at, finished_at, claimed_at
FROM instructions;
DROP TABLE instructions;
ALTER TABLE instructions_v4 RENAME TO instructions;
CREATE INDEX instructions_ready ON instructions (state, next_attempt_at);
CREATE INDEX instructions_server ON instructions (server, state)
