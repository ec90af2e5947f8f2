-- Verifications are counted and superseded per (number, ID characters typed), so a stranger's
-- starts with made-up ID characters never use up, or replace, the holder's. The keyed digest of
-- the pair is kept only as long as the verification row. Rows from before this column have it
-- NULL and keep the old rule (a NULL holder_since never verifies).
ALTER TABLE verifications ADD COLUMN pair_hash TEXT;
CREATE INDEX IF NOT EXISTS verifications_by_pair ON verifications (pair_hash, created_at);

-- Look-up summaries sent by SMS, counted per number per hour across replicas.
CREATE TABLE IF NOT EXISTS summary_sms (
    id TEXT PRIMARY KEY,
    number_hash TEXT NOT NULL,
    sent_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS summary_sms_by_number ON summary_sms (number_hash, sent_at);
