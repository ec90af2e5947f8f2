-- The audit trail: who (tenant) did what (action) for which number (keyed hash only), touching
-- which apps, with what outcome, under which correlator, when (ms since the epoch).
CREATE TABLE IF NOT EXISTS audit_log (
    at BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    number_hash TEXT NOT NULL,
    action TEXT NOT NULL,
    apps TEXT NOT NULL,
    outcome TEXT NOT NULL,
    correlator TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_log (at);
CREATE INDEX IF NOT EXISTS audit_by_number ON audit_log (number_hash, at);
