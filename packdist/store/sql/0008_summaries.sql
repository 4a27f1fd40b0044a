-- packdist site schema, version 8: the views read summaries, not the history.
-- job_state_counts: how many instructions of each job are in each state. The triggers below
-- keep it in the transaction of every change to an instruction (insert, change of state,
-- delete), so it always equals a recount of ``instructions``; ``packdist status``, the
-- overview, ``job list`` and ``/metrics`` read it instead. A count may be split over shards
-- (PostgreSQL: one per concurrent transaction, so that no two wait for one counter row);
-- its value is the sum over them. SQLite has one writer: shard 0.
CREATE TABLE job_state_counts (
    job_id  TEXT NOT NULL,
    state   TEXT NOT NULL,
    shard   INTEGER NOT NULL DEFAULT 0,
    n       INTEGER NOT NULL,
    PRIMARY KEY (job_id, state, shard)
) WITHOUT ROWID;
INSERT INTO job_state_counts (job_id, state, shard, n)
SELECT job_id, state, 0, count(*) FROM instructions GROUP BY job_id, state;
CREATE TRIGGER instructions_counted_on_insert AFTER INSERT ON instructions
BEGIN
    INSERT INTO job_state_counts (job_id, state, shard, n) VALUES (new.job_id, new.state, 0, 1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER instructions_counted_on_change AFTER UPDATE OF state, job_id ON instructions
WHEN old.state IS NOT new.state OR old.job_id IS NOT new.job_id
BEGIN
    INSERT INTO job_state_counts (job_id, state, shard, n) VALUES (old.job_id, old.state, 0, -1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n - 1;
    INSERT INTO job_state_counts (job_id, state, shard, n) VALUES (new.job_id, new.state, 0, 1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER instructions_counted_on_delete AFTER DELETE ON instructions
BEGIN
    INSERT INTO job_state_counts (job_id, state, shard, n) VALUES (old.job_id, old.state, 0, -1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n - 1;
END;
-- instruction_totals: attempts made and bytes sent, over every instruction (the counters of
-- /metrics), kept by a trigger on the columns that hold them.
CREATE TABLE instruction_totals (
    shard       INTEGER PRIMARY KEY,
    attempts    INTEGER NOT NULL,
    bytes_sent  INTEGER NOT NULL
);
INSERT INTO instruction_totals (shard, attempts, bytes_sent)
SELECT 0, coalesce(sum(attempts), 0), coalesce(sum(bytes_sent), 0) FROM instructions;
CREATE TRIGGER instructions_totalled_on_change AFTER UPDATE OF attempts, bytes_sent
ON instructions
WHEN old.attempts IS NOT new.attempts OR old.bytes_sent IS NOT new.bytes_sent
BEGIN
    UPDATE instruction_totals SET attempts = attempts + new.attempts - old.attempts,
        bytes_sent = bytes_sent + new.bytes_sent - old.bytes_sent
    WHERE shard = 0;
END;
CREATE TRIGGER instructions_totalled_on_delete AFTER DELETE ON instructions
BEGIN
    UPDATE instruction_totals SET attempts = attempts - old.attempts,
        bytes_sent = bytes_sent - old.bytes_sent
    WHERE shard = 0;
END;
-- transfer_histogram: successful installs by duration (claim to verified), per upper bound
-- ``le`` (seconds; the last one infinite), each install counted once, under the smallest
-- bound it fits; the bounds are those of /metrics (packdist.site.metrics.TRANSFER_BOUNDS).
CREATE TABLE transfer_histogram (
    le      REAL NOT NULL,
    shard   INTEGER NOT NULL DEFAULT 0,
    n       INTEGER NOT NULL,
    total   REAL NOT NULL,
    PRIMARY KEY (le, shard)
);
INSERT INTO transfer_histogram (le, shard, n, total) VALUES (0.5, 0, 0, 0.0), (1, 0, 0, 0.0),
    (2.5, 0, 0, 0.0), (5, 0, 0, 0.0), (10, 0, 0, 0.0), (30, 0, 0, 0.0), (60, 0, 0, 0.0),
    (120, 0, 0, 0.0), (300, 0, 0, 0.0), (600, 0, 0, 0.0), (1800, 0, 0, 0.0),
    (3600, 0, 0, 0.0), (9e999, 0, 0, 0.0);
WITH took AS (
    SELECT CASE WHEN finished_at > claimed_at THEN finished_at - claimed_at ELSE 0.0 END AS d
    FROM instructions
    WHERE state = 'installed' AND claimed_at IS NOT NULL AND finished_at IS NOT NULL),
binned AS (SELECT (SELECT min(h.le) FROM transfer_histogram h WHERE h.le >= took.d) AS le, d
    FROM took)
UPDATE transfer_histogram SET
    n = (SELECT count(*) FROM binned WHERE binned.le = transfer_histogram.le),
    total = (SELECT coalesce(sum(d), 0.0) FROM binned WHERE binned.le = transfer_histogram.le);
CREATE TRIGGER instructions_timed_when_installed AFTER UPDATE OF state ON instructions
WHEN new.state = 'installed' AND old.state IS NOT 'installed'
    AND new.claimed_at IS NOT NULL AND new.finished_at IS NOT NULL
BEGIN
    UPDATE transfer_histogram SET n = n + 1, total = total + max(new.finished_at - new.claimed_at, 0.0)
    WHERE shard = 0 AND le = (SELECT min(le) FROM transfer_histogram
                              WHERE le >= max(new.finished_at - new.claimed_at, 0.0));
END;
CREATE TRIGGER instructions_untimed_on_delete AFTER DELETE ON instructions
WHEN old.state = 'installed' AND old.claimed_at IS NOT NULL AND old.finished_at IS NOT NULL
BEGIN
    UPDATE transfer_histogram SET n = n - 1, total = total - max(old.finished_at - old.claimed_at, 0.0)
    WHERE shard = 0 AND le = (SELECT min(le) FROM transfer_histogram
                              WHERE le >= max(old.finished_at - old.claimed_at, 0.0));
END;
-- event_counts: the timeline counted by kind (packdist_events_total), kept with every event.
CREATE TABLE event_counts (
    kind    TEXT NOT NULL,
    shard   INTEGER NOT NULL DEFAULT 0,
    n       INTEGER NOT NULL,
    PRIMARY KEY (kind, shard)
) WITHOUT ROWID;
INSERT INTO event_counts (kind, shard, n) SELECT kind, 0, count(*) FROM events GROUP BY kind;
CREATE TRIGGER events_counted AFTER INSERT ON events
BEGIN
    INSERT INTO event_counts (kind, shard, n) VALUES (new.kind, 0, 1)
    ON CONFLICT (kind, shard) DO UPDATE SET n = n + 1;
END;
-- newest_instructions: for each server and package, its newest instruction (of the newest
-- job): what the package x server matrix shows where the server holds nothing. Written with
-- each job's instructions (insert_job), so the matrix reads one row per cell, not every
-- instruction ever written.
CREATE TABLE newest_instructions (
    server          TEXT NOT NULL,
    package_id      TEXT NOT NULL,
    instruction_id  INTEGER NOT NULL,
    PRIMARY KEY (server, package_id)
) WITHOUT ROWID;
INSERT INTO newest_instructions (server, package_id, instruction_id)
SELECT server, package_id, id FROM (
    SELECT i.server, j.package_id, i.id, row_number() OVER (
        PARTITION BY i.server, j.package_id ORDER BY j.created_at DESC, i.id DESC) AS r
    FROM instructions i JOIN jobs j ON j.id = i.job_id)
WHERE r = 1;
-- a page of one job's instructions in one state, in server order
CREATE INDEX instructions_job_state ON instructions (job_id, state, server)
