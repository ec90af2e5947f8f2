-- Why a ticket is in its state, as a code (issue 18), so a client such as the portal says it in
-- its reader's language rather than showing the gateway's English `detail`: one of the codes of
-- `unbind::lifecycle::Why` ('accepted_by_app', 'not_confirmed_in_time', ...); '' while never
-- attempted, and for tickets from before these columns (shown by their detail alone). And
-- whether `detail` is the app's own text (1), worth showing as it is, or the gateway's words (0).
ALTER TABLE tickets ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE tickets ADD COLUMN detail_from_app BIGINT NOT NULL DEFAULT 0;
