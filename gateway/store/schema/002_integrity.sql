-- Outbox schema version 2: row checksums, a quarantine for damaged rows, command ids by order.

-- CRC-32 of id, kind, device and data (see outbox.row_crc); NULL for rows stored before version 2,
-- which are checked by parsing instead.
ALTER TABLE events ADD COLUMN crc INTEGER;

-- Rows found damaged when claimed: kept as they were (no type affinity) for inspection, never sent.
CREATE TABLE quarantine (
    seq            INTEGER PRIMARY KEY,
    quarantined_at REAL NOT NULL,          -- unix time, informative only
    why            TEXT NOT NULL,
    id, kind, class, device, data, ts, ts_synced, attempt, alarm_state, crc
);

-- Command ids are forgotten by arrival order (the oldest beyond a count), never by the clock.
CREATE TABLE commands_by_order (
    n           INTEGER PRIMARY KEY,       -- arrival order
    id          TEXT NOT NULL UNIQUE,
    received_at REAL NOT NULL,             -- unix time, informative only
    result      TEXT NOT NULL
);
INSERT INTO commands_by_order (id, received_at, result)
    SELECT id, received_at, result FROM commands ORDER BY received_at, id;
DROP TABLE commands;
ALTER TABLE commands_by_order RENAME TO commands;
