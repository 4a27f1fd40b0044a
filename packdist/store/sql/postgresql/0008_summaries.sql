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
CREATE TABLE instruction_totals (
    shard       INTEGER PRIMARY KEY,
    attempts    BIGINT NOT NULL,
    bytes_sent  BIGINT NOT NULL
);
INSERT INTO instruction_totals (shard, attempts, bytes_sent)
SELECT 0, coalesce(sum(attempts), 0), coalesce(sum(bytes_sent), 0) FROM instructions;
CREATE FUNCTION packdist_total_instruction() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k integer := packdist_count_shard();
    attempts_now bigint := CASE WHEN TG_OP = 'DELETE' THEN 0 ELSE NEW.attempts END;
    bytes_now bigint := CASE WHEN TG_OP = 'DELETE' THEN 0 ELSE NEW.bytes_sent END;
BEGIN
    INSERT INTO instruction_totals (shard, attempts, bytes_sent)
    VALUES (k, attempts_now - OLD.attempts, bytes_now - OLD.bytes_sent)
    ON CONFLICT (shard) DO UPDATE SET
        attempts = instruction_totals.attempts + excluded.attempts,
        bytes_sent = instruction_totals.bytes_sent + excluded.bytes_sent;
    RETURN NULL;
END
$$;
CREATE TRIGGER instructions_totalled_on_change AFTER UPDATE OF attempts, bytes_sent
ON instructions FOR EACH ROW
WHEN (OLD.attempts IS DISTINCT FROM NEW.attempts OR OLD.bytes_sent IS DISTINCT FROM NEW.bytes_sent)
EXECUTE FUNCTION packdist_total_instruction();
CREATE TRIGGER instructions_totalled_on_delete AFTER DELETE ON instructions
FOR EACH ROW EXECUTE FUNCTION packdist_total_instruction();
CREATE TABLE transfer_histogram (
    le      DOUBLE PRECISION NOT NULL,
    shard   INTEGER NOT NULL DEFAULT 0,
    n       BIGINT NOT NULL,
    total   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (le, shard)
);
INSERT INTO transfer_histogram (le, shard, n, total) VALUES (0.5, 0, 0, 0.0), (1, 0, 0, 0.0),
    (2.5, 0, 0, 0.0), (5, 0, 0, 0.0), (10, 0, 0, 0.0), (30, 0, 0, 0.0), (60, 0, 0, 0.0),
    (120, 0, 0, 0.0), (300, 0, 0, 0.0), (600, 0, 0, 0.0), (1800, 0, 0, 0.0),
    (3600, 0, 0, 0.0), ('Infinity', 0, 0, 0.0);
WITH took AS (
    SELECT CASE WHEN finished_at > claimed_at THEN finished_at - claimed_at ELSE 0.0 END AS d
    FROM instructions
    WHERE state = 'installed' AND claimed_at IS NOT NULL AND finished_at IS NOT NULL),
binned AS (SELECT (SELECT min(h.le) FROM transfer_histogram h WHERE h.le >= took.d) AS le, d
    FROM took)
UPDATE transfer_histogram SET
    n = (SELECT count(*) FROM binned WHERE binned.le = transfer_histogram.le),
    total = (SELECT coalesce(sum(d), 0.0) FROM binned WHERE binned.le = transfer_histogram.le);
CREATE FUNCTION packdist_time_install() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k integer := packdist_count_shard();
    one integer := CASE WHEN TG_OP = 'DELETE' THEN -1 ELSE 1 END;
    took double precision := CASE WHEN TG_OP = 'DELETE'
        THEN greatest(OLD.finished_at - OLD.claimed_at, 0.0)
        ELSE greatest(NEW.finished_at - NEW.claimed_at, 0.0) END;
BEGIN
    INSERT INTO transfer_histogram (le, shard, n, total)
    SELECT min(le), k, one, one * took FROM transfer_histogram WHERE le >= took
    ON CONFLICT (le, shard) DO UPDATE SET n = transfer_histogram.n + excluded.n,
        total = transfer_histogram.total + excluded.total;
    RETURN NULL;
END
$$;
CREATE TRIGGER instructions_timed_when_installed AFTER UPDATE OF state ON instructions
FOR EACH ROW
WHEN (NEW.state = 'installed' AND OLD.state IS DISTINCT FROM 'installed'
      AND NEW.claimed_at IS NOT NULL AND NEW.finished_at IS NOT NULL)
EXECUTE FUNCTION packdist_time_install();
CREATE TRIGGER instructions_untimed_on_delete AFTER DELETE ON instructions FOR EACH ROW
WHEN (OLD.state = 'installed' AND OLD.claimed_at IS NOT NULL AND OLD.finished_at IS NOT NULL)
EXECUTE FUNCTION packdist_time_install();
CREATE TABLE event_counts (
    kind    TEXT NOT NULL,
    shard   INTEGER NOT NULL DEFAULT 0,
    n       BIGINT NOT NULL,
    PRIMARY KEY (kind, shard)
);
INSERT INTO event_counts (kind, shard, n) SELECT kind, 0, count(*) FROM events GROUP BY kind;
CREATE FUNCTION packdist_count_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_counts (kind, shard, n) VALUES (NEW.kind, packdist_count_shard(), 1)
    ON CONFLICT (kind, shard) DO UPDATE SET n = event_counts.n + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_counted AFTER INSERT ON events
FOR EACH ROW EXECUTE FUNCTION packdist_count_event();
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
