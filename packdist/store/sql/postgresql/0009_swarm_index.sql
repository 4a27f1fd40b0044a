-- packdist site schema, version 9: the swarm of a package read from indexes, not a scan
-- of every server. Holders of a package: server_packages by package; receivers: the
-- package's jobs, then their instructions in the states that receive (the index on
-- instructions (job_id, state, server) of version 8).
CREATE INDEX server_packages_package ON server_packages (package_id, server);
CREATE INDEX jobs_package ON jobs (package_id, action)
