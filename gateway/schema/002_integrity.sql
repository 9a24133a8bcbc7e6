-- Outbox schema version 2: row checksums, a quarantine for damaged rows.

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
