-- Every statement of the store, by name (packdist.store.queries). Parameters are ``:name``;
-- a list parameter expands to one placeholder per item. A variant for one dialect is named
-- ``-- name: x [postgresql]``. The only statement that sets an instruction's state is
-- ``transition`` (the store's one writer, packdist.store.instructions).

-- === site ===================================================================================

-- name: site_row
SELECT name FROM site

-- name: insert_site
INSERT INTO site (id, name, created_at) VALUES (1, :name, :now)

-- === packages and chunks ====================================================================

-- name: known_chunks
SELECT digest FROM chunks WHERE digest IN (:digests)

-- name: insert_chunk
INSERT INTO chunks (digest, size) VALUES (:digest, :size) ON CONFLICT DO NOTHING

-- name: package_exists
SELECT 1 AS found FROM packages WHERE name = :name AND version = :version

-- name: insert_package
INSERT INTO packages (id, name, version, manifest, signature, size, file_count, chunk_count,
    created_at)
VALUES (:id, :name, :version, :manifest, :signature, :size, :file_count, :chunk_count, :now)

-- name: package_by_name
SELECT id, name, version, size, file_count, chunk_count, created_at FROM packages
WHERE name = :name AND version = :version

-- name: package_by_id
SELECT id, name, version, size, file_count, chunk_count, created_at FROM packages
WHERE id = :id

-- name: package_manifest
SELECT manifest, signature FROM packages WHERE id = :id

-- name: list_packages
SELECT id, name, version, size, file_count, chunk_count, created_at FROM packages
ORDER BY name, created_at

-- name: package_refs
SELECT id, name, version FROM packages

-- === servers ================================================================================

-- name: server_removed_flag
SELECT removed FROM servers WHERE name = :name

-- name: insert_server
INSERT INTO servers (name, url, token_hash, created_at, labels)
VALUES (:name, :url, :token_hash, :now, :labels)

-- name: reenrol_server
UPDATE servers SET url = :url, token_hash = :token_hash, created_at = :now, removed = 0,
    last_seen = NULL, boot_id = NULL, disk_free = NULL, back_at = NULL, labels = :labels,
    removed_at = NULL
WHERE name = :name

-- name: clear_server_groups
DELETE FROM server_groups WHERE server = :name

-- name: clear_server_holdings
DELETE FROM server_packages WHERE server = :name

-- name: insert_server_group
INSERT INTO server_groups (server, grp) VALUES (:server, :grp) ON CONFLICT DO NOTHING

-- name: mark_server_removed
UPDATE servers SET removed = 1, token_hash = 'removed:' || name, removed_at = :now
WHERE name = :name AND removed = 0 RETURNING name

-- name: servers_removed_since
SELECT name FROM servers WHERE removed = 1 AND removed_at >= :since
ORDER BY removed_at DESC, name LIMIT :limit

-- name: live_servers
SELECT name, url, created_at, last_seen, disk_free, labels FROM servers
WHERE removed = 0 ORDER BY name

-- name: live_server_names
SELECT name FROM servers WHERE removed = 0 ORDER BY name

-- name: live_servers_named
SELECT name, url, created_at, last_seen, disk_free, labels FROM servers
WHERE removed = 0 AND name IN (:names) ORDER BY name

-- name: groups_of_servers
SELECT server, grp FROM server_groups WHERE server IN (:names) ORDER BY server, grp

-- name: live_server_by_name
SELECT name, url, created_at, last_seen, disk_free, labels FROM servers
WHERE removed = 0 AND name = :name

-- name: live_server_by_token
SELECT name, url, created_at, last_seen, disk_free, labels FROM servers
WHERE removed = 0 AND token_hash = :token_hash

-- name: live_token_hashes_among
-- which of these enrollment tokens (as hashes) are still those of enrolled servers
SELECT token_hash FROM servers WHERE removed = 0 AND token_hash IN (:hashes)

-- name: live_server_names_among
SELECT name FROM servers WHERE removed = 0 AND name IN (:names)

-- name: live_server_names_among [postgresql]
-- shared locks: a server removed concurrently waits for the job to be written, or is gone
SELECT name FROM servers WHERE removed = 0 AND name IN (:names) FOR SHARE

-- name: all_server_groups
SELECT g.server, g.grp FROM server_groups g JOIN servers s ON s.name = g.server
WHERE s.removed = 0 ORDER BY g.server, g.grp

-- name: groups_of_server
SELECT grp FROM server_groups WHERE server = :name ORDER BY grp

-- name: servers_in_group
SELECT g.server FROM server_groups g JOIN servers s ON s.name = g.server
WHERE g.grp = :grp AND s.removed = 0 ORDER BY g.server

-- name: swarm
-- holders (a copy not known corrupt), and receivers: an instruction under way, or one whose
-- retry is due (not one that waits out a back-off: it would not fetch its share now); each
-- server once (a holder with an instruction too is a holder). Both halves walk indexes of
-- this package's rows: nothing proportional to the fleet.
SELECT s.name, s.url, s.labels, s.last_seen, 1 AS holder
FROM server_packages p JOIN servers s ON s.name = p.server
WHERE p.package_id = :pkg AND p.corrupt IS NULL AND s.removed = 0 AND s.child IS NULL
UNION
SELECT s.name, s.url, s.labels, s.last_seen, 0 AS holder
FROM jobs j JOIN instructions i ON i.job_id = j.id JOIN servers s ON s.name = i.server
WHERE j.package_id = :pkg AND j.action = 'install' AND s.removed = 0 AND s.child IS NULL
AND i.state IN (:receiving)
AND (i.state != :backing_off OR i.next_attempt_at <= :now)
AND NOT EXISTS (SELECT 1 FROM server_packages p WHERE p.server = s.name
                AND p.package_id = :pkg AND p.corrupt IS NULL)
ORDER BY 1

-- name: server_liveness
SELECT last_seen, boot_id, back_at FROM servers WHERE name = :name AND removed = 0

-- name: record_liveness
UPDATE servers SET last_seen = :now, boot_id = :boot_id, disk_free = :disk_free,
    back_at = CASE WHEN :came_back = 1 THEN :now ELSE back_at END
WHERE name = :name

-- name: touch_server
-- a batch of heartbeats that changed nothing else: when each server was last heard of
UPDATE servers SET last_seen = :last_seen, disk_free = :disk_free
WHERE name = :name AND removed = 0 AND (last_seen IS NULL OR last_seen < :last_seen)

-- name: server_back_at
SELECT back_at FROM servers WHERE name = :name

-- name: server_back_at [postgresql]
-- a shared lock orders this with a heartbeat that changes back_at: either this attempt's
-- retry sees the server back, or the heartbeat sees the retry and wakes it
SELECT back_at FROM servers WHERE name = :name FOR SHARE

-- === what servers hold ======================================================================

-- name: holdings_of_server
SELECT package_id FROM server_packages WHERE server = :server

-- name: drop_holding
DELETE FROM server_packages WHERE server = :server AND package_id = :package_id

-- name: add_holding
INSERT INTO server_packages (server, package_id, installed_at)
VALUES (:server, :package_id, :now) ON CONFLICT DO NOTHING

-- name: install_holding
-- a verified install: the server holds the package, and any corruption mark is cleared
INSERT INTO server_packages (server, package_id, installed_at) VALUES (:server, :package_id, :now)
ON CONFLICT (server, package_id) DO UPDATE SET installed_at = excluded.installed_at, corrupt = NULL

-- name: mark_holding_corrupt
INSERT INTO server_packages (server, package_id, installed_at, corrupt)
VALUES (:server, :package_id, :now, :corrupt)
ON CONFLICT (server, package_id) DO UPDATE SET corrupt = excluded.corrupt

-- name: clear_holding_corrupt
UPDATE server_packages SET corrupt = NULL
WHERE server = :server AND package_id = :package_id AND corrupt IS NOT NULL

-- name: package_holders
SELECT sp.server FROM server_packages sp JOIN servers s ON s.name = sp.server
WHERE sp.package_id = :pkg AND s.removed = 0
UNION SELECT i.server FROM instructions i JOIN jobs j ON j.id = i.job_id
JOIN servers s ON s.name = i.server
WHERE j.package_id = :pkg AND j.action = 'install' AND s.removed = 0
AND i.state IN (:unfinished) ORDER BY 1

-- === jobs and instructions ==================================================================

-- name: insert_job
INSERT INTO jobs (id, package_id, created_at, max_attempts, deadline, options, action)
VALUES (:id, :package_id, :now, :max_attempts, :deadline, :options, :action)

-- name: insert_instruction
INSERT INTO instructions (job_id, server, state, next_attempt_at, updated_at, bytes_total)
VALUES (:job_id, :server, :state, :now, :now, :bytes_total)

-- name: job_by_id
SELECT j.id, j.package_id, j.created_at, j.max_attempts, j.deadline, j.options, j.action,
    p.name, p.version
FROM jobs j JOIN packages p ON p.id = j.package_id WHERE j.id = :id

-- name: recent_jobs
SELECT j.id, j.package_id, j.created_at, j.max_attempts, j.deadline, j.options, j.action,
    p.name, p.version
FROM jobs j JOIN packages p ON p.id = j.package_id ORDER BY j.created_at DESC LIMIT :limit

-- name: recent_jobs_of_package
SELECT j.id, j.package_id, j.created_at, j.max_attempts, j.deadline, j.options, j.action,
    p.name, p.version
FROM jobs j JOIN packages p ON p.id = j.package_id
WHERE p.name = :name AND (:version = '' OR p.version = :version)
ORDER BY j.created_at DESC LIMIT :limit

-- name: instructions_of_job
SELECT id, job_id, server, state, attempts, last_error, next_attempt_at, bytes_sent,
    bytes_total, updated_at, finished_at, bytes_from_peers, bytes_done, error_kind, phase,
    cancel_cause
FROM instructions WHERE job_id = :job_id ORDER BY server

-- name: instructions_of_job_page
SELECT id, job_id, server, state, attempts, last_error, next_attempt_at, bytes_sent,
    bytes_total, updated_at, finished_at, bytes_from_peers, bytes_done, error_kind, phase,
    cancel_cause
FROM instructions WHERE job_id = :job_id ORDER BY server LIMIT :limit OFFSET :offset

-- name: instructions_of_job_in_page
-- served by the index on (job_id, state, server) for one state
SELECT id, job_id, server, state, attempts, last_error, next_attempt_at, bytes_sent,
    bytes_total, updated_at, finished_at, bytes_from_peers, bytes_done, error_kind, phase,
    cancel_cause
FROM instructions WHERE job_id = :job_id AND state IN (:states) ORDER BY server
LIMIT :limit OFFSET :offset

-- name: job_state_counts
SELECT job_id, state, sum(n) AS n FROM job_state_counts WHERE job_id IN (:job_ids)
GROUP BY job_id, state

-- name: record_newest_instructions
-- a new job's instructions are the newest of their (server, package), in server order (two
-- jobs written at once take the rows in one order: no deadlock); the higher id wins
INSERT INTO newest_instructions (server, package_id, instruction_id)
SELECT server, :package_id, id FROM instructions WHERE job_id = :job_id ORDER BY server
ON CONFLICT (server, package_id) DO UPDATE SET instruction_id = CASE
    WHEN excluded.instruction_id > newest_instructions.instruction_id
    THEN excluded.instruction_id ELSE newest_instructions.instruction_id END

-- name: instruction_by_id
SELECT i.id, i.job_id, i.server, i.state, i.lease_owner, i.claimed_at, i.superseded_by,
    i.attempts, j.action, j.package_id
FROM instructions i JOIN jobs j ON j.id = i.job_id WHERE i.id = :id

-- name: job_instructions_in
SELECT i.id, i.server FROM instructions i WHERE i.job_id = :job_id AND i.state IN (:states)

-- name: job_instructions_in_live
-- of a job, the instructions in these states whose server is not removed
SELECT i.id, i.server FROM instructions i JOIN servers s ON s.name = i.server
WHERE i.job_id = :job_id AND i.state IN (:states) AND s.removed = 0

-- name: server_instructions_in
SELECT id FROM instructions WHERE server = :server AND state IN (:states)

-- name: server_waiting_retries
-- a server's retrying instructions that still wait out a back-off
SELECT id FROM instructions WHERE server = :server AND state IN (:states)
AND next_attempt_at > :now

-- name: unfinished_of_package
-- instructions of jobs with this action for this package on these servers, in these states
SELECT i.id, i.state, i.job_id, i.server, j.options FROM instructions i
JOIN jobs j ON j.id = i.job_id
WHERE j.package_id = :package_id AND j.action = :action AND i.server IN (:servers)
AND i.state IN (:states)
ORDER BY i.id

-- name: unfinished_of_package [postgresql]
-- the same, locked: a claim under way is waited for and its state read again
SELECT i.id, i.state, i.job_id, i.server, j.options FROM instructions i
JOIN jobs j ON j.id = i.job_id
WHERE j.package_id = :package_id AND j.action = :action AND i.server IN (:servers)
AND i.state IN (:states)
ORDER BY i.id
FOR UPDATE OF i

-- name: mark_superseded_by
UPDATE instructions SET superseded_by = :job_id WHERE id IN (:ids) AND state = 'sending'

-- name: transition
-- THE one statement that sets an instruction's state: filled in by InstructionQueries.apply
-- from the event's row of packdist.states (its sources, its target, the columns it may set).
UPDATE instructions SET state = :to_state, updated_at = :now{assignments}
WHERE id IN (:ids) AND state IN (:from_states){guards}
RETURNING id, job_id, server, superseded_by

-- name: instruction_state
SELECT state FROM instructions WHERE id = :id

-- === the despooler ==========================================================================

-- name: next_due_at
SELECT min(next_attempt_at) AS due FROM instructions WHERE state IN (:states)

-- name: claim_candidates
-- due work in one state of servers not removed, oldest due first (the index's order: no
-- sort); not while an opposite attempt for the same version on the same server is under
-- way (the newer intent waits for it to end); with heard_since (not -1), only servers
-- heard from since then; child: '*' any server, '' only this site's own, else only the
-- servers behind that child site
SELECT i.id, i.next_attempt_at FROM instructions i
JOIN servers s ON s.name = i.server JOIN jobs j ON j.id = i.job_id
WHERE i.state = :state AND i.next_attempt_at <= :now AND s.removed = 0
AND (:heard_since < 0 OR s.last_seen >= :heard_since)
AND (:child = '*' OR (:child = '' AND s.child IS NULL) OR s.child = :child)
AND NOT EXISTS (SELECT 1 FROM instructions o JOIN jobs oj ON oj.id = o.job_id
    WHERE o.server = i.server AND o.state = 'sending'
    AND oj.package_id = j.package_id AND oj.action != j.action)
ORDER BY i.next_attempt_at LIMIT :limit

-- name: claim_candidates [postgresql]
-- the same; rows another worker is claiming right now are skipped, not waited for
SELECT i.id, i.next_attempt_at FROM instructions i
JOIN servers s ON s.name = i.server JOIN jobs j ON j.id = i.job_id
WHERE i.state = :state AND i.next_attempt_at <= :now AND s.removed = 0
AND (:heard_since < 0 OR s.last_seen >= :heard_since)
AND (:child = '*' OR (:child = '' AND s.child IS NULL) OR s.child = :child)
AND NOT EXISTS (SELECT 1 FROM instructions o JOIN jobs oj ON oj.id = o.job_id
    WHERE o.server = i.server AND o.state = 'sending'
    AND oj.package_id = j.package_id AND oj.action != j.action)
ORDER BY i.next_attempt_at LIMIT :limit
FOR UPDATE OF i SKIP LOCKED

-- name: installs_under_way
SELECT count(*) AS n FROM instructions i JOIN jobs j ON j.id = i.job_id
WHERE i.server = :server AND j.package_id = :package_id AND j.action = 'install'
AND i.state = 'sending'

-- name: claim_details
SELECT i.id, i.job_id, i.server, s.url, j.package_id, p.name, p.version, i.attempts,
    i.attempts_base, j.created_at, j.max_attempts, j.deadline, j.options, sp.corrupt,
    j.action, i.lease_owner, s.last_seen AS server_last_seen
FROM instructions i JOIN jobs j ON j.id = i.job_id
JOIN servers s ON s.name = i.server JOIN packages p ON p.id = j.package_id
LEFT JOIN server_packages sp ON sp.server = i.server AND sp.package_id = j.package_id
WHERE i.id IN (:ids) ORDER BY i.next_attempt_at, i.id

-- name: renew_lease
UPDATE instructions SET lease_expires_at = :until,
    bytes_sent = CASE WHEN bytes_sent > :bytes_sent THEN bytes_sent ELSE :bytes_sent END,
    bytes_total = :bytes_total,
    bytes_from_peers = CASE WHEN bytes_from_peers > :bytes_from_peers
                            THEN bytes_from_peers ELSE :bytes_from_peers END,
    bytes_done = CASE WHEN bytes_done > :bytes_done THEN bytes_done ELSE :bytes_done END,
    phase = :phase
WHERE id = :id AND state = 'sending' AND lease_owner = :owner

-- name: expired_leases
SELECT id, superseded_by, lease_expires_at, lease_owner FROM instructions
WHERE state = 'sending' AND lease_expires_at < :now

-- name: leases_of_owner
SELECT id, superseded_by, lease_owner FROM instructions WHERE state = 'sending'
AND (lease_owner = :owner OR lease_owner LIKE :prefix ESCAPE '!')

-- name: superseding_job
SELECT action FROM jobs WHERE id = :id

-- name: start_attempt
INSERT INTO attempts (instruction_id, attempt, lease_owner, claimed_at)
VALUES (:id, :attempt, :owner, :now)

-- name: end_attempt
UPDATE attempts SET ended_at = :now, outcome = :outcome, error_kind = :error_kind
WHERE instruction_id = :id AND ended_at IS NULL

-- name: attempt_history
SELECT instruction_id, attempt, lease_owner, claimed_at, ended_at, outcome, error_kind
FROM attempts ORDER BY instruction_id, attempt

-- === events =================================================================================

-- name: insert_event
INSERT INTO events (at, job_id, server, kind, message, actor)
VALUES (:at, :job_id, :server, :kind, :message, :actor)

-- name: events_after
SELECT id, at, job_id, server, kind, message, actor FROM events WHERE id > :after ORDER BY id
LIMIT :limit

-- name: job_events_after
SELECT id, at, job_id, server, kind, message, actor FROM events
WHERE id > :after AND job_id = :job_id ORDER BY id LIMIT :limit

-- name: newest_events
SELECT id, at, job_id, server, kind, message, actor FROM events ORDER BY id DESC LIMIT :limit

-- name: newest_job_events
SELECT id, at, job_id, server, kind, message, actor FROM events WHERE job_id = :job_id
ORDER BY id DESC LIMIT :limit

-- === views ==================================================================================

-- name: live_holdings
SELECT sp.server, sp.package_id, sp.corrupt FROM server_packages sp
JOIN servers s ON s.name = sp.server WHERE s.removed = 0

-- name: live_newest_instructions
-- per (server not removed, package): its newest instruction, from the summary of newest
SELECT n.package_id, i.server, i.state, i.job_id, i.attempts, i.last_error,
    i.next_attempt_at, i.bytes_sent, i.bytes_total, i.updated_at, j.action, i.error_kind,
    i.cancel_cause
FROM newest_instructions n JOIN servers s ON s.name = n.server
JOIN instructions i ON i.id = n.instruction_id JOIN jobs j ON j.id = i.job_id
WHERE s.removed = 0

-- name: newest_instructions_of_servers
SELECT n.package_id, i.server, i.state, i.job_id, i.attempts, i.last_error,
    i.next_attempt_at, i.bytes_sent, i.bytes_total, i.updated_at, j.action, i.error_kind,
    i.cancel_cause
FROM newest_instructions n JOIN instructions i ON i.id = n.instruction_id
JOIN jobs j ON j.id = i.job_id WHERE n.server IN (:servers)

-- name: holdings_of_servers
SELECT server, package_id, corrupt FROM server_packages WHERE server IN (:servers)

-- name: matrix_tally
-- the matrix in counts: per package, how many live servers' cells show each combination
-- of what decides a cell's word (its newest instruction, whether and how it is held)
SELECT n.package_id, i.state, j.action, i.error_kind, count(*) AS n,
    sum(CASE WHEN sp.server IS NULL THEN 0 ELSE 1 END) AS held,
    sum(CASE WHEN sp.corrupt IS NULL THEN 0 ELSE 1 END) AS corrupt
FROM newest_instructions n JOIN servers s ON s.name = n.server
JOIN instructions i ON i.id = n.instruction_id JOIN jobs j ON j.id = i.job_id
LEFT JOIN server_packages sp ON sp.server = n.server AND sp.package_id = n.package_id
WHERE s.removed = 0
GROUP BY n.package_id, i.state, j.action, i.error_kind

-- name: holdings_tally
-- copies held where no instruction ever went (reported by heartbeats), per package
SELECT sp.package_id, count(*) AS n,
    sum(CASE WHEN sp.corrupt IS NULL THEN 0 ELSE 1 END) AS corrupt
FROM server_packages sp JOIN servers s ON s.name = sp.server
WHERE s.removed = 0 AND NOT EXISTS (SELECT 1 FROM newest_instructions n
    WHERE n.server = sp.server AND n.package_id = sp.package_id)
GROUP BY sp.package_id

-- name: live_server_count
SELECT count(*) AS n, coalesce(sum(CASE WHEN last_seen >= :online_since THEN 1 ELSE 0 END), 0)
    AS online
FROM servers WHERE removed = 0

-- name: servers_attention_first
-- a page of servers not removed: first those with a cell in trouble (a newest instruction
-- retrying or failed, a copy found corrupt), then those not heard from lately, then the rest
SELECT s.name FROM servers s WHERE s.removed = 0
ORDER BY CASE
    WHEN EXISTS (SELECT 1 FROM newest_instructions n JOIN instructions i
                 ON i.id = n.instruction_id
                 WHERE n.server = s.name AND i.state IN (:trouble)) THEN 0
    WHEN EXISTS (SELECT 1 FROM server_packages sp
                 WHERE sp.server = s.name AND sp.corrupt IS NOT NULL) THEN 0
    WHEN s.last_seen IS NULL OR s.last_seen < :online_since THEN 1
    ELSE 2 END, s.name
LIMIT :limit

-- name: instructions_by_state
SELECT state, sum(n) AS n FROM job_state_counts GROUP BY state

-- name: instruction_sums
SELECT coalesce(sum(attempts), 0) AS attempts, coalesce(sum(bytes_sent), 0) AS bytes_sent
FROM instruction_totals

-- name: transfer_histogram
SELECT le, sum(n) AS n, sum(total) AS total FROM transfer_histogram GROUP BY le ORDER BY le

-- name: state_counts_of_every_job
SELECT c.job_id, c.state, sum(c.n) AS n, j.action FROM job_state_counts c
JOIN jobs j ON j.id = c.job_id GROUP BY c.job_id, c.state, j.action

-- name: events_by_kind
SELECT kind, sum(n) AS n FROM event_counts GROUP BY kind

-- === child sites ============================================================================

-- name: insert_child_site
INSERT INTO child_sites (name, url, token_hash, created_at, bandwidth, windows)
VALUES (:name, :url, :token_hash, :now, :bandwidth, :windows)

-- name: set_child_link
UPDATE child_sites SET bandwidth = :bandwidth, windows = :windows WHERE name = :name

-- name: child_site_exists
SELECT name FROM child_sites WHERE name = :name

-- name: child_site_by_token
SELECT name, url, created_at, last_seen, site_name, ca, bandwidth, windows
FROM child_sites
WHERE token_hash = :token_hash

-- name: verified_holdings
-- what every server not removed holds, as last verified (a child site's report)
SELECT sp.server, sp.package_id FROM server_packages sp JOIN servers s ON s.name = sp.server
WHERE s.removed = 0 AND sp.corrupt IS NULL

-- name: child_site_named
SELECT name, url, created_at, last_seen, site_name, ca, bandwidth, windows
FROM child_sites
WHERE name = :name

-- name: child_site_names
SELECT name FROM child_sites ORDER BY name

-- name: list_child_sites
SELECT name, url, created_at, last_seen, site_name, ca, bandwidth, windows
FROM child_sites ORDER BY name

-- name: servers_of_child
-- a child site's servers as this site keeps them (from its reports), removed ones too
SELECT name, removed, last_seen, disk_free FROM servers WHERE child = :child

-- name: child_holdings
-- what a child site's servers hold, verified, as it reported
SELECT sp.server, sp.package_id FROM server_packages sp JOIN servers s ON s.name = sp.server
WHERE s.child = :child AND s.removed = 0 AND sp.corrupt IS NULL

-- name: child_holdings_all
-- every holding recorded for a child's servers (found corrupt too): what a report is
-- compared with
SELECT sp.server, sp.package_id FROM server_packages sp JOIN servers s ON s.name = sp.server
WHERE s.child = :child

-- name: insert_child_server
INSERT INTO servers (name, url, token_hash, created_at, labels, child, last_seen, disk_free)
VALUES (:name, :url, 'child:' || :name, :now, '{}', :child, :last_seen, :disk_free)

-- name: reenrol_child_server
UPDATE servers SET url = :url, token_hash = 'child:' || name, created_at = :now, removed = 0,
    last_seen = :last_seen, boot_id = NULL, disk_free = :disk_free, back_at = NULL,
    labels = '{}', removed_at = NULL, child = :child
WHERE name = :name

-- name: update_child_server
UPDATE servers SET last_seen = :last_seen, disk_free = :disk_free WHERE name = :name

-- name: relayed_unfinished
-- unfinished installs of jobs a parent sent (their options name it: read by the service)
SELECT j.package_id, i.server, j.options FROM instructions i JOIN jobs j ON j.id = i.job_id
WHERE j.action = 'install' AND i.state IN (:states) AND j.options LIKE '%relayed_by%'

-- name: child_retries
-- the retrying instructions of a child's servers (woken when its link changes)
SELECT i.id FROM instructions i JOIN servers s ON s.name = i.server
WHERE s.child = :child AND i.state IN (:states)

-- name: sent_to_child
-- whether this package is on its way to a server behind the child (an install unfinished)
SELECT 1 AS sent FROM instructions i JOIN jobs j ON j.id = i.job_id
JOIN servers s ON s.name = i.server
WHERE s.child = :child AND j.package_id = :package_id AND j.action = 'install'
AND i.state IN ('pending', 'sending', 'retrying') LIMIT 1

-- name: holds_verified
SELECT 1 AS held FROM server_packages
WHERE server = :server AND package_id = :package_id AND corrupt IS NULL

-- name: newest_instruction_for
-- the newest instruction of this action for this package on this server (a child site says
-- with it how far the work its parent sent has come)
SELECT i.id, i.state, i.attempts, i.last_error, i.error_kind, i.bytes_sent, i.bytes_total,
    i.bytes_done, i.phase, i.updated_at, i.cancel_cause
FROM instructions i JOIN jobs j ON j.id = i.job_id
WHERE j.package_id = :package_id AND j.action = :action AND i.server = :server
ORDER BY i.id DESC LIMIT 1

-- name: record_child_report
UPDATE child_sites SET last_seen = :now, site_name = :site_name, ca = :ca
WHERE name = :name

-- === PostgreSQL's own plumbing ==============================================================

-- name: migration_lock [postgresql]
SELECT pg_advisory_xact_lock(:key)

-- name: create_schema_version [postgresql]
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)

-- name: schema_version [postgresql]
SELECT max(version) AS v FROM schema_version

-- name: record_schema_version [postgresql]
INSERT INTO schema_version (version) VALUES (:version)

-- name: notify [postgresql]
SELECT pg_notify(:channel, '')

-- === one server's page ======================================================================

-- name: server_instructions_newest
SELECT i.id, i.job_id, i.state, i.attempts, i.last_error, i.error_kind, i.next_attempt_at,
    i.updated_at, j.action, p.name, p.version, i.cancel_cause
FROM instructions i JOIN jobs j ON j.id = i.job_id JOIN packages p ON p.id = j.package_id
WHERE i.server = :server ORDER BY i.id DESC LIMIT :limit

-- name: server_events_newest
SELECT id, at, job_id, server, kind, message, actor FROM events WHERE server = :server
ORDER BY id DESC LIMIT :limit

-- === one package's servers ===================================================================

-- name: newest_instructions_of_package
SELECT n.package_id, i.server, i.state, i.job_id, i.attempts, i.last_error,
    i.next_attempt_at, i.bytes_sent, i.bytes_total, i.updated_at, j.action, i.error_kind,
    i.cancel_cause
FROM newest_instructions n JOIN servers s ON s.name = n.server
JOIN instructions i ON i.id = n.instruction_id JOIN jobs j ON j.id = i.job_id
WHERE s.removed = 0 AND n.package_id = :package_id

-- name: holdings_of_package
SELECT sp.server, sp.package_id, sp.corrupt FROM server_packages sp
JOIN servers s ON s.name = sp.server WHERE s.removed = 0 AND sp.package_id = :package_id

-- === search ==================================================================================

-- name: search_servers
SELECT name FROM servers WHERE removed = 0 AND lower(name) LIKE lower(:pattern) ESCAPE '\'
ORDER BY name
LIMIT :limit

-- name: search_packages
SELECT id, name, version FROM packages
WHERE lower(name) LIKE lower(:pattern) ESCAPE '\' OR version = :text
ORDER BY name, created_at DESC LIMIT :limit

-- name: group_names
SELECT DISTINCT g.grp FROM server_groups g JOIN servers s ON s.name = g.server
WHERE s.removed = 0 ORDER BY g.grp LIMIT :limit

-- name: search_jobs
SELECT id FROM jobs WHERE id LIKE lower(:prefix) ESCAPE '\' ORDER BY created_at DESC LIMIT :limit

-- === rollouts ===============================================================================

-- name: insert_rollout
INSERT INTO rollouts (id, package_id, state, error_threshold, wave_timeout, options, schedule,
                      why, created_at, updated_at)
VALUES (:id, :package_id, :state, :error_threshold, :wave_timeout, :options, :schedule,
        NULL, :now, :now)

-- name: insert_wave
INSERT INTO rollout_waves (rollout, number, servers, state) VALUES (:rollout, :number, :servers, :state)

-- name: rollout_by_id
SELECT r.*, p.name, p.version FROM rollouts r JOIN packages p ON p.id = r.package_id
WHERE r.id = :id

-- name: rollouts_newest
SELECT r.*, p.name, p.version FROM rollouts r JOIN packages p ON p.id = r.package_id
ORDER BY r.created_at DESC, r.id LIMIT :limit

-- name: rollout_ids_in_states
SELECT id FROM rollouts WHERE state IN (:states) ORDER BY created_at, id

-- name: waves_of_rollout
SELECT * FROM rollout_waves WHERE rollout = :rollout ORDER BY number

-- name: waves_of_rollouts
SELECT * FROM rollout_waves WHERE rollout IN (:rollouts) ORDER BY rollout, number

-- name: rollout_events
-- a rollout's own events: every one of them words its id first
SELECT id, at, job_id, server, kind, message, actor FROM events
WHERE kind = 'rollout' AND message LIKE :prefix ORDER BY id DESC LIMIT :limit

-- name: lock_rollout
-- taken first by every transaction that changes a rollout or its waves: one order of locks
-- (the rollout, then its waves), and the state read after it is the latest (SQLite's
-- BEGIN IMMEDIATE already serialises writers)
SELECT id FROM rollouts WHERE id = :id

-- name: lock_rollout [postgresql]
SELECT id FROM rollouts WHERE id = :id FOR UPDATE

-- name: set_rollout_why
UPDATE rollouts SET why = :why WHERE id = :id

-- name: rollout_transition
-- THE one statement that sets a rollout's state (packdist.states.ROLLOUT_TRANSITIONS)
UPDATE rollouts SET state = :to_state, updated_at = :now{assignments}
WHERE id = :id AND state IN (:from_states)
RETURNING id

-- name: wave_transition
-- THE one statement that sets a wave's state (packdist.states.WAVE_TRANSITIONS)
UPDATE rollout_waves SET state = :to_state{assignments}
WHERE rollout = :rollout AND number = :number AND state IN (:from_states)
RETURNING number

-- === active versions ========================================================================

-- name: active_of_server
SELECT server, name, package_id, previous_id, since FROM server_active WHERE server = :server

-- name: active_of_package
SELECT server, name, package_id, previous_id, since FROM server_active
WHERE name = :name AND server IN (:servers)

-- name: active_exists
SELECT 1 AS found FROM server_active WHERE server = :server AND name = :name

-- name: switch_active
-- the version active until now becomes the previous one
UPDATE server_active SET previous_id = package_id, package_id = :package_id, since = :now
WHERE server = :server AND name = :name AND package_id != :package_id

-- name: insert_active
INSERT INTO server_active (server, name, package_id, previous_id, since)
VALUES (:server, :name, :package_id, NULL, :now)


-- name: site_worker_seen
INSERT INTO site_workers (worker, started_at, last_seen, stopped_at)
VALUES (:worker, :now, :now, NULL)
ON CONFLICT (worker) DO UPDATE SET last_seen = excluded.last_seen, stopped_at = NULL

-- name: site_worker_stopped
UPDATE site_workers SET last_seen = :now, stopped_at = :now WHERE worker = :worker

-- name: site_workers_forgotten
-- workers of long ago (each restart is a new one)
DELETE FROM site_workers WHERE last_seen < :before

-- name: site_workers_seen
SELECT max(last_seen) AS last_seen, count(*) AS workers,
       sum(CASE WHEN stopped_at IS NULL AND last_seen >= :since THEN 1 ELSE 0 END) AS running
FROM site_workers

-- === servers gone offline ===================================================================

-- name: mark_servers_offline
-- once per going offline: a server already marked (by another worker) is not again
UPDATE servers SET offline_at = :now
WHERE name IN (:names) AND removed = 0 AND offline_at IS NULL AND last_seen < :before
RETURNING name, last_seen

-- name: mark_server_online
UPDATE servers SET offline_at = NULL WHERE name = :name AND offline_at IS NOT NULL

-- name: mark_servers_heard
-- of a batch of heartbeats just written, the servers marked offline before the heartbeat
-- written was heard (by a worker that had not heard it): online again
UPDATE servers SET offline_at = NULL
WHERE name IN (:names) AND removed = 0 AND offline_at IS NOT NULL AND last_seen > offline_at
RETURNING name

-- === enrollment tokens re-issued, agents refused ============================================

-- name: replace_token_hash
UPDATE servers SET token_hash = :token_hash WHERE name = :name AND removed = 0

-- name: servers_with_url_port
-- the servers whose URL ends in this port (an agent refused is told by its address)
SELECT name, url FROM servers WHERE removed = 0 AND url LIKE :pattern

-- name: agent_refused
-- the latest refusal kept; news (its event to be written) when none came since :since. In
-- one statement: two workers refusing the same agent at once take the row in turn (its lock
-- on PostgreSQL), and the second finds the refusal shown, so one event is written
INSERT INTO refused_agents (server, at, remote, reason, shown_at)
VALUES (:server, :at, :remote, :reason, :at)
ON CONFLICT (server) DO UPDATE
SET at = excluded.at, remote = excluded.remote, reason = excluded.reason,
    shown_at = CASE WHEN refused_agents.at < :since THEN excluded.at
        ELSE refused_agents.shown_at END
RETURNING shown_at = at AS news

-- name: agents_refused_since
SELECT server, at, remote, reason FROM refused_agents WHERE at >= :since ORDER BY server

-- name: refusals_forgotten
DELETE FROM refused_agents WHERE server = :server

-- === clients ================================================================================

-- name: client_exists
SELECT name FROM clients WHERE name = :name

-- name: insert_client
INSERT INTO clients (name, token_hash, labels, created_at) VALUES (:name, :token_hash, :labels, :now)

-- name: delete_client
DELETE FROM clients WHERE name = :name

-- name: client_by_token
SELECT name, labels, created_at, last_fetch FROM clients WHERE token_hash = :token_hash

-- name: list_clients
SELECT name, labels, created_at, last_fetch FROM clients ORDER BY name

-- name: client_fetching
UPDATE clients SET last_fetch = :now WHERE name = :name

-- name: count_client_totals
-- a sources request, a fetch reported or the bytes from one source, added to what is counted
INSERT INTO client_totals (package_id, source, requests, fetches, bytes)
VALUES (:package_id, :source, :requests, :fetches, :bytes)
ON CONFLICT (package_id, source) DO UPDATE SET
    requests = client_totals.requests + excluded.requests,
    fetches = client_totals.fetches + excluded.fetches,
    bytes = client_totals.bytes + excluded.bytes

-- name: client_totals
SELECT t.package_id, p.name || '@' || p.version AS ref, t.source, t.requests, t.fetches, t.bytes
FROM client_totals t JOIN packages p ON p.id = t.package_id
ORDER BY t.package_id, t.source

-- newcomer
-- === site workers seen ===============================================================