-- packdist site schema, version 15: rollouts in waves. A rollout is one package going to its
-- targets wave by wave; each wave, once started, is an ordinary job (its instructions keep
-- every guarantee of a job's: leases, retries, never a lost target).
CREATE TABLE rollouts (
    id              TEXT PRIMARY KEY,
    package_id      TEXT NOT NULL REFERENCES packages(id),
    state           TEXT NOT NULL CHECK (state IN ('running','paused','succeeded','cancelled')),
    error_threshold REAL NOT NULL,     -- percent of a wave that may fail
    wave_timeout    REAL NOT NULL,     -- seconds after its start a wave is judged at the latest
    options         TEXT NOT NULL DEFAULT '{}',  -- its jobs' options (activate, health check)
    schedule        TEXT NOT NULL DEFAULT '{}',  -- windows a wave may start in (core/schedule)
    why             TEXT,              -- why it paused or ended, in words
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE TABLE rollout_waves (
    rollout     TEXT NOT NULL REFERENCES rollouts(id),
    number      INTEGER NOT NULL,      -- from 1
    servers     TEXT NOT NULL,         -- JSON list: the servers this wave adds
    state       TEXT NOT NULL CHECK (state IN ('waiting','running','succeeded','failed','cancelled')),
    job_id      TEXT REFERENCES jobs(id),  -- its job, once started
    started_at  REAL,
    judged_at   REAL,
    failed      INTEGER,               -- servers counted failed when it was judged
    PRIMARY KEY (rollout, number)
);
CREATE INDEX rollouts_unfinished ON rollouts (state) WHERE state IN ('running', 'paused')

;
-- the rollout pages read a rollout's own events (kind rollout) without a scan of them all
CREATE INDEX events_rollouts ON events (id) WHERE kind = 'rollout'
