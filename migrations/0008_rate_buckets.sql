-- Tenants' rate limits and budgets as totals over every replica sharing the store (issue 14,
-- item 6): one token bucket per (tenant, limit), drawn from in small blocks by each replica. The
-- bucket is refilled lazily from `updated_at` at the configured rate when drawn from;
-- `last_grant` is what the last draw took (so the one UPDATE can return it).
CREATE TABLE IF NOT EXISTS rate_buckets (
    name TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL,
    last_grant DOUBLE PRECISION NOT NULL DEFAULT 0
);
