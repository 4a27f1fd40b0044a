-- packdist site schema, version 17: why an instruction was cancelled, and when a refusal
-- was last shown, as data rather than read back from words.
-- instructions.cancel_cause: who or what cancelled it, in words ("cancelled by operator
-- alice", "superseded by removal job …", "server removed"); NULL unless cancelled. An
-- operator's cancel keeps last_error as it was (the failure before it), so the views
-- no longer guess the cause from the error's first words.
ALTER TABLE instructions ADD COLUMN cancel_cause TEXT
;

-- what the views told before this column existed, kept for the rows cancelled before it
UPDATE instructions SET cancel_cause = CASE
    WHEN last_error LIKE 'superseded by%' OR last_error LIKE 'cancelled by%'
        OR last_error LIKE 'server removed%' THEN last_error
    ELSE 'cancelled by operator' END
WHERE state = 'cancelled'
;

-- refused_agents.shown_at: when the refusal's event was last written, so that two site
-- workers refusing the same agent at once write one event (the second sees it shown)
ALTER TABLE refused_agents ADD COLUMN shown_at DOUBLE PRECISION
;

UPDATE refused_agents SET shown_at = at
