-- packdist site schema, version 10: who did it. An event of an operator's action (a job
-- created, cancelled or retried, a server added or removed, a package created) names the
-- operator; events of the site's own doing have none.
ALTER TABLE events ADD COLUMN actor TEXT
