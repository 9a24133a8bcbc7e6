-- The gateway's word that it applied an acknowledgement (its audit.alarm_acknowledged): the
-- senior has been told that help is on the way. An acknowledgement sent by another platform
-- component than this desk is recorded from it too (acked_by = the ack's "by").
ALTER TABLE alarm ADD COLUMN confirmed_at timestamptz;
