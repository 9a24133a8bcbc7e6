-- Outbox schema version 4: the highest seq ever committed to this file.

-- Raised in the transaction of every write that stores events (rows are deleted once delivered,
-- so the rows alone do not tell it). Each record of the spool carries the value committed when
-- it was appended: a record that names a higher one than the file's own shows commits the file
-- lost (its -wal file deleted, or an older copy restored), whose seqs the spool's watermarks
-- must then not cover.
INSERT INTO meta (key, value) VALUES ('db_top', (
    SELECT MAX((SELECT value FROM meta WHERE key='last_seq'),
               COALESCE((SELECT MAX(seq) FROM events), 0),
               COALESCE((SELECT MAX(seq) FROM quarantine), 0))
));
