-- packdist site schema, version 5: peers, and progress apart from bytes on the wire.
-- servers.labels: location labels as a JSON object ({"site": "berlin"}); peers that share
-- the location label are preferred as sources of each other's chunks.
-- instructions.bytes_from_peers: of the bytes an install received, how many came from peers
-- (the rest came from the site).
ALTER TABLE servers ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE instructions ADD COLUMN bytes_from_peers INTEGER NOT NULL DEFAULT 0;
-- instructions.bytes_done: how much of the package the server holds so far (chunks found
-- locally plus chunks received, decoded sizes): the progress to show, now that what crosses
-- the wire (bytes_sent) may be compressed or a delta.
ALTER TABLE instructions ADD COLUMN bytes_done INTEGER NOT NULL DEFAULT 0
