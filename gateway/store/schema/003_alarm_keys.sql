-- Outbox schema version 3: alarms stored once per key.

-- The alarm stored for each key a producer gave (the watch: its address and the alert's identity),
-- written in the alarm's own transaction: a producer that repeats what it raised before (a watch
-- that never had its alert confirmed, also after the gateway crashed) gets the alarm stored then.
-- Kept for a day (alarms.ALARM_KEY_KEPT_S), pruned by the writes that add keys. No index by age:
-- keys come from people's alerts, a few a day, and one page more per alarm's commit is not free.
CREATE TABLE alarm_keys (
    key        TEXT PRIMARY KEY,
    alarm_id   TEXT NOT NULL,
    created_at REAL NOT NULL               -- unix time the alarm was stored
) WITHOUT ROWID;
