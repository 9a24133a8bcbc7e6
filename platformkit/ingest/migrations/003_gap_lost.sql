-- A gap older than the ingest's forget time is given up once: closed as 'lost'. Gaps that
-- were left open below complete_to before (never read again, shown on the desk for ever) are
-- closed so now.
ALTER TABLE gap DROP CONSTRAINT gap_closed_by_check;
ALTER TABLE gap ADD CONSTRAINT gap_closed_by_check
    CHECK (closed_by IN ('filled', 'explained', 'changed', 'lost'));
UPDATE gap SET closed_at = now(), closed_by = 'lost'
    FROM gateway
    WHERE gap.gw = gateway.gw AND gap.closed_at IS NULL AND gap.first_seq <= gateway.complete_to;
