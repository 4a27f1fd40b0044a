-- packdist site schema, version 6: an attempt under way is superseded when it ends.
-- instructions.superseded_by: the job whose opposite intent (install vs remove of the same
-- version on the same server) came while this instruction was 'sending'. Its attempt runs
-- to its end (the agent is already doing it), and the newer job's instruction waits for
-- it; should the attempt fail, the instruction is cancelled instead of retried.
ALTER TABLE instructions ADD COLUMN superseded_by TEXT
