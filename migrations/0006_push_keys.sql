-- A carrier's submission key (issue 14, item 7): a push sent again after a lost answer, under the
-- same key and with the same content (its keyed fingerprint), is answered with the submission it
-- first made, so no app gets the numbers twice. The same key with other content is refused.
CREATE TABLE IF NOT EXISTS push_requests (
    tenant TEXT NOT NULL,
    submission_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, submission_key)
);
