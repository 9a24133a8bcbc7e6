-- The ingest's first schema: events, presence, alarms, commands, seq gaps, rejected messages.
-- Applied by platformkit.ingest.migrations in one transaction; never edited once released:
-- a change is a new file NNN_what.sql.

-- One row per gateway that sent anything: counters and how far its seq is accounted for.
CREATE TABLE gateway (
    gw text PRIMARY KEY,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_event_at timestamptz,
    max_seq bigint NOT NULL DEFAULT 0,
    -- Every seq up to this one is stored, explained by a gateway.dropped, or a recorded gap.
    complete_to bigint NOT NULL DEFAULT 0,
    events bigint NOT NULL DEFAULT 0,      -- stored
    duplicates bigint NOT NULL DEFAULT 0,  -- arrived again (same id and seq; alarms not counted)
    resends bigint NOT NULL DEFAULT 0,     -- alarms arrived again with a higher attempt
    conflicts bigint NOT NULL DEFAULT 0,   -- a stored seq arrived with another id (a bug)
    rejected bigint NOT NULL DEFAULT 0     -- messages that broke the contract
);

-- Every event, once: the contract's (gw, seq) is unique and never reused.
CREATE TABLE event (
    gw text NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 1),
    id text NOT NULL,
    kind text NOT NULL,
    class text NOT NULL,
    ts timestamptz NOT NULL,
    ts_synced boolean NOT NULL,
    device text,
    data jsonb NOT NULL,
    attempt integer NOT NULL,  -- the highest attempt received
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gw, seq)
);
CREATE INDEX event_gw_kind ON event (gw, kind);

-- The seq ranges each gateway.dropped explains.
CREATE TABLE dropped_range (
    gw text NOT NULL,
    event_seq bigint NOT NULL,  -- the seq of the gateway.dropped event that says so
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (gw, event_seq, first_seq),
    CHECK (first_seq <= last_seq)
);

-- Holes in a gateway's seq that no gateway.dropped explains. Open while closed_at is null;
-- reported (logged, shown) once it has lasted the grace period; closed when filled or explained.
CREATE TABLE gap (
    gw text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    reported_at timestamptz,
    closed_at timestamptz,
    closed_by text CHECK (closed_by IN ('filled', 'explained', 'changed')),
    CHECK (first_seq <= last_seq)
);
CREATE UNIQUE INDEX gap_open ON gap (gw, first_seq, last_seq) WHERE closed_at IS NULL;

-- Presence from the retained status topic (online, offline by the will or by a shutdown).
CREATE TABLE presence (
    gw text PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('online', 'offline')),
    reason text,          -- offline: lost (the will) or shutdown
    since timestamptz,    -- online: the gateway's own connection time
    version text,
    boot_id text,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- Alarms until the desk acknowledges them (and after, for the record).
CREATE TABLE alarm (
    gw text NOT NULL,
    id text NOT NULL,
    seq bigint NOT NULL,
    kind text NOT NULL,
    device text,
    ts timestamptz NOT NULL,
    data jsonb NOT NULL,
    attempt integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    last_received_at timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz,  -- the senior cancelled (the alarm stays open: the desk closes it)
    acked_by text,
    acked_at timestamptz,
    PRIMARY KEY (gw, id)
);
CREATE INDEX alarm_open ON alarm (received_at) WHERE acked_at IS NULL;

-- Commands sent from the desk and their results (cmd.result events).
CREATE TABLE command (
    id text PRIMARY KEY,
    gw text NOT NULL,
    name text NOT NULL,
    args jsonb NOT NULL,
    sent_by text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    result_at timestamptz,
    ok boolean,
    result jsonb,
    error jsonb
);
CREATE INDEX command_recent ON command (sent_at);

-- Messages that broke the contract, kept whole for inspection (and counted per gateway).
CREATE TABLE rejected (
    n bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic text NOT NULL,
    gw text,
    error text NOT NULL,
    payload bytea NOT NULL
);
