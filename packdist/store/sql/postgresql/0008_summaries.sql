-- packdist site schema for PostgreSQL, version 8: the views read summaries, not the history
-- (see sql/0008_summaries.sql for what each table holds).
-- A count is split over shards: a transaction writes only the shards it holds a
-- transaction-level advisory lock on (packdist_count_shard), so two concurrent transactions
-- never write one counter row: none waits for another's, whatever order it changes
-- instructions of several jobs in (a batch claim), and no deadlock can come of it.
CREATE TABLE job_state_counts (
    job_id  TEXT NOT NULL,
    state   TEXT NOT NULL,
    shard   INTEGER NOT NULL DEFAULT 0,
    n       BIGINT NOT NULL,
    PRIMARY KEY (job_id, state, shard)
);
INSERT INTO job_state_counts (job_id, state, shard, n)
SELECT job_id, state, 0, count(*) FROM instructions GROUP BY job_id, state;
CREATE FUNCTION packdist_count_shard() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    first integer := pg_backend_pid() % 32;
BEGIN
    -- the lock is the transaction's until it ends; asked again, it is granted again
    FOR i IN 0..31 LOOP
        IF pg_try_advisory_xact_lock(1885627137, (first + i) % 32) THEN
            RETURN (first + i) % 32;
        END IF;
    END LOOP;
    RETURN first;  -- 32 writers at once: share a row (correct, it may only wait)
END
$$;
CREATE FUNCTION packdist_count_instruction() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k integer := packdist_count_shard();
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO job_state_counts (job_id, state, shard, n)
        VALUES (OLD.job_id, OLD.state, k, -1)
        ON CONFLICT (job_id, state, shard) DO UPDATE SET n = job_state_counts.n - 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO job_state_counts (job_id, state, shard, n)
        VALUES (NEW.job_id, NEW.state, k, 1)
        ON CONFLICT (job_id, state, shard) DO UPDATE SET n = job_state_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER instructions_counted AFTER INSERT OR DELETE ON instructions
FOR EACH ROW EXECUTE FUNCTION packdist_count_instruction();
CREATE TRIGGER instructions_counted_on_change AFTER UPDATE OF state, job_id ON instructions
FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.job_id IS DISTINCT FROM NEW.job_id)
EXECUTE FUNCTION packdist_count_instruction();
CREATE TABLE newest_instructions (
    server          TEXT NOT NULL,
    package_id      TEXT NOT NULL,
    instruction_id  BIGINT NOT NULL,
    PRIMARY KEY (server, package_id)
);
INSERT INTO newest_instructions (server, package_id, instruction_id)
SELECT server, package_id, id FROM (
    SELECT i.server, j.package_id, i.id, row_number() OVER (
        PARTITION BY i.server, j.package_id ORDER BY j.created_at DESC, i.id DESC) AS r
    FROM instructions i JOIN jobs j ON j.id = i.job_id) AS ranked
WHERE r = 1;
CREATE INDEX instructions_job_state ON instructions (job_id, state, server)
