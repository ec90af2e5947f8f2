-- The carrier push: lists of cancelled / re-issued numbers, stored first, then delivered to every
-- app in batches of at most 1,000 numbers, at least once, with per-app progress.
CREATE TABLE IF NOT EXISTS submissions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    total BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS submission_numbers (
    submission_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    sealed_number TEXT NOT NULL,
    cancelled_at BIGINT NOT NULL,
    reissued_at BIGINT NOT NULL,
    PRIMARY KEY (submission_id, seq)
);

-- One row per (submission, app, batch): the unit of delivery, claimed with a lease like tickets.
CREATE TABLE IF NOT EXISTS deliveries (
    submission_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    batch_no BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    count BIGINT NOT NULL,
    delivered BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    PRIMARY KEY (submission_id, app_id, batch_no)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at) WHERE delivered = 0;

-- The latest re-issue date known per number (keyed hash), for CheckNumberRecycled.
CREATE TABLE IF NOT EXISTS recycled_numbers (
    number_hash TEXT PRIMARY KEY,
    reissued_at BIGINT NOT NULL
);
