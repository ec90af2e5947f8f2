-- Pushes stream into the store in chunks (issue 14, item 7): a submission is written while it
-- arrives, a few thousand numbers per short transaction, and only a complete one is delivered or
-- answered from. `state`: 'receiving' (still arriving; discarded if it never completes),
-- 'complete' (delivered; its re-issue dates are being applied), 'applied' (done). Rows from before
-- this column were stored whole: 'applied'. Each number keeps its keyed hash, so the dates are
-- applied from the store, chunk by chunk, rather than from memory.
ALTER TABLE submissions ADD COLUMN state TEXT NOT NULL DEFAULT 'applied';
ALTER TABLE submission_numbers ADD COLUMN number_hash TEXT;
CREATE INDEX IF NOT EXISTS submissions_unfinished ON submissions (state, created_at);
