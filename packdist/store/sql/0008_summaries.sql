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
