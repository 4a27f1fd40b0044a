-- packdist site schema, version 2: a server that comes back during an attempt is retried at once.
-- servers.back_at: last time the server came back after silence (or restarted).
-- instructions.claimed_at: start of the current (or last) attempt.
ALTER TABLE servers ADD COLUMN back_at REAL;
ALTER TABLE instructions ADD COLUMN claimed_at REAL;
