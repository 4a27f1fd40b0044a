-- packdist site schema, version 7: failure kinds as data, and the history of attempts.
-- instructions.error_kind: the kind of the last failure (transient, integrity, auth, disk,
-- refused, internal; packdist.errors.ErrorKind), which the retry policy and the views read.
ALTER TABLE instructions ADD COLUMN error_kind TEXT;
-- attempts: one row per claim of an instruction, written when the claim is made and when it
-- ends, so that who held an instruction, and when, can be checked afterwards (two workers
-- never hold one at once: their [claimed_at, ended_at) never overlap).
CREATE TABLE attempts (
    instruction_id INTEGER NOT NULL REFERENCES instructions(id),
    attempt        INTEGER NOT NULL,
    lease_owner    TEXT NOT NULL,
    claimed_at     REAL NOT NULL,
    ended_at       REAL,
    outcome        TEXT,
    error_kind     TEXT,
    PRIMARY KEY (instruction_id, attempt)
);
CREATE INDEX events_server ON events (server, id)
;
-- Failures recorded before kinds were data: their kind, read once from their words.
UPDATE instructions SET error_kind = CASE
    WHEN lower(last_error) LIKE '%hash mismatch%' OR lower(last_error) LIKE '%signature%'
        OR lower(last_error) LIKE '%reported package id%' THEN 'integrity'
    WHEN lower(last_error) LIKE '%disk full%' THEN 'disk'
    WHEN lower(last_error) LIKE '%refused the credential%' THEN 'auth'
    ELSE 'transient' END
WHERE last_error IS NOT NULL
