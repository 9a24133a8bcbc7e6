-- Outbox schema version 1.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('last_seq', 0);

-- Every event not yet delivered (and alarms until the platform acknowledges them).
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,          -- per-gateway sequence, allocated in the insert's transaction
    id          TEXT NOT NULL UNIQUE,         -- UUIDv7, the same on every retransmission
    kind        TEXT NOT NULL,
    class       TEXT NOT NULL,
    device      TEXT,
    data        TEXT NOT NULL,                -- compact JSON
    ts          TEXT NOT NULL,                -- RFC 3339 UTC, milliseconds
    ts_synced   INTEGER NOT NULL,
    mono_ns     INTEGER NOT NULL,             -- CLOCK_BOOTTIME when ts was taken, for clock correction
    boot_id     TEXT NOT NULL,
    size        INTEGER NOT NULL,             -- bytes counted against the quota
    attempt     INTEGER NOT NULL DEFAULT 1,
    alarm_state TEXT,                         -- alarms: pending | delivered
    due_at      REAL,                         -- alarms: unix time of the next publication for lack of ack
    created_at  REAL NOT NULL                 -- unix time the gateway stored it
);
CREATE INDEX events_by_class ON events (class, seq);

-- Platform commands already executed, with the result to send again for a repeated id.
CREATE TABLE commands (
    id          TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    result      TEXT NOT NULL
) WITHOUT ROWID;
