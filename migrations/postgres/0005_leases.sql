-- Leases: which daemon drives a line, and which one runs the singleton duties (timeouts,
-- cron retry runs, gauges). A lease is a row with an expiry, renewed by its holder and taken
-- over by another daemon once it has expired.
CREATE TABLE leases (
    name        TEXT    PRIMARY KEY,
    holder      TEXT    NOT NULL,
    expires_at  BIGINT NOT NULL
);
