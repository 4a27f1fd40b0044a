-- packdist site schema, version 11: when a server was removed. Its peers refuse the peer
-- credentials that name it from then on (the site tells them, with each heartbeat answer,
-- which servers were removed within a peer credential's life).
ALTER TABLE servers ADD COLUMN removed_at REAL
