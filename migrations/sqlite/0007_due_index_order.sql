-- Claims take due rows ORDER BY next_attempt_at, id LIMIT n. With id in the index the order
-- comes from the index and the LIMIT stops the scan early; without it PostgreSQL read and
-- sorted every due row of the campaign on every claim (40 ms at 10,000 due rows, growing
-- with the campaign). SQLite's index already ended in the rowid; it is rebuilt the same way
-- so both backends declare one shape.
DROP INDEX hopper_due;
CREATE INDEX hopper_due ON hopper (campaign_id, next_attempt_at, id) WHERE state IN ('fresh', 'retry');
