-- Durable unbind tickets: one per account, carried to the app and back by the worker of whichever
-- replica claims it. Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS tickets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    number_hash TEXT NOT NULL,
    -- The phone number, sealed with the gateway's key: the app must be told which number.
    sealed_number TEXT NOT NULL,
    app_id TEXT NOT NULL,
    -- The app's account id, sealed; and a keyed digest of (number, app, account) to find an
    -- account's open ticket.
    sealed_account_id TEXT NOT NULL,
    account_key TEXT NOT NULL,
    -- The ref the client sent, returned with the ticket.
    account_ref TEXT NOT NULL,
    -- HOLDER_REQUEST | NUMBER_RECYCLED
    reason TEXT NOT NULL,
    -- queued | sent | accepted | completed | rejected | failed
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    vendor_ref TEXT NOT NULL DEFAULT '',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    -- Which worker holds the ticket, until when. A dead replica's lease simply runs out.
    lease_owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL
);

-- At most one open ticket per account, whatever the idempotency keys.
CREATE UNIQUE INDEX IF NOT EXISTS tickets_one_open_per_account ON tickets (account_key)
    WHERE state IN ('queued', 'sent', 'accepted');
CREATE INDEX IF NOT EXISTS tickets_due ON tickets (next_attempt_at)
    WHERE state IN ('queued', 'sent', 'accepted');
CREATE INDEX IF NOT EXISTS tickets_by_number ON tickets (number_hash, created_at);

-- Every transition of every ticket, with time and cause.
CREATE TABLE IF NOT EXISTS ticket_events (
    ticket_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    cause TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ticket_events_by_ticket ON ticket_events (ticket_id, at);

-- Unbind requests by idempotency key (the Stripe model): a replay returns the same tickets.
CREATE TABLE IF NOT EXISTS unbind_requests (
    tenant TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    ticket_ids TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);
CREATE INDEX IF NOT EXISTS unbind_requests_by_age ON unbind_requests (created_at);
