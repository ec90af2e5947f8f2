-- Identity verifications in progress. Written in the SQL both SQLite and PostgreSQL accept.
-- The phone number is kept sealed (encrypted with the gateway's key), the code only as an HMAC
-- digest, and the ID characters not at all.
CREATE TABLE IF NOT EXISTS verifications (
    id TEXT PRIMARY KEY,
    number_hash TEXT NOT NULL,
    sealed_number TEXT NOT NULL,
    tenant TEXT NOT NULL,
    code_digest TEXT NOT NULL,
    -- When the current holder got the number; NULL when the ID characters did not match, in
    -- which case no code was sent and none can ever verify.
    holder_since BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    -- pending | used | failed | superseded
    state TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS verifications_by_number ON verifications (number_hash, created_at);
CREATE INDEX IF NOT EXISTS verifications_by_expiry ON verifications (expires_at);
