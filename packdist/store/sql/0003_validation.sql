-- packdist site schema, version 3: validation of installed trees.
-- server_packages.corrupt: what the last validation found wrong with that copy, in words
-- ("bin/tool altered, lib/x missing"); NULL when it verified (or was never validated).
-- Cleared when a (repair) install is verified.
ALTER TABLE server_packages ADD COLUMN corrupt TEXT
