-- The inbox: conversations with contacts (interactions), every message in and out, and the
-- customer-service window per (line, contact).

CREATE TABLE interactions (
    id           INTEGER PRIMARY KEY,
    line         TEXT    NOT NULL,
    phone        TEXT    NOT NULL,
    campaign_id  INTEGER REFERENCES campaigns(id),
    hopper_id    INTEGER REFERENCES hopper(id),
    kind         TEXT    NOT NULL CHECK (kind IN ('campaign', 'agent')),
    state        TEXT    NOT NULL CHECK (state IN ('open', 'closed')),
    reason       TEXT,                              -- why it was opened: replied, handoff, late_reply, inbound
    tags         TEXT    NOT NULL DEFAULT '[]',     -- JSON array of strings
    opened_at    INTEGER NOT NULL,
    closed_at    INTEGER
);
CREATE INDEX interactions_open ON interactions (phone, line) WHERE state = 'open';
CREATE INDEX interactions_state ON interactions (state, line);

CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    interaction_id  INTEGER REFERENCES interactions(id),
    line            TEXT    NOT NULL,
    phone           TEXT    NOT NULL,
    direction       TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    type            TEXT    NOT NULL,
    text            TEXT,
    wamid           TEXT,
    status          TEXT,
    at              INTEGER NOT NULL
);
-- Inbound webhooks are retried and duplicated: one row per inbound wamid.
CREATE UNIQUE INDEX messages_inbound_wamid ON messages (wamid) WHERE direction = 'in';
CREATE INDEX messages_interaction ON messages (interaction_id);
CREATE INDEX messages_out_wamid ON messages (wamid) WHERE direction = 'out';

CREATE TABLE contact_windows (
    line             TEXT    NOT NULL,
    phone            TEXT    NOT NULL,
    last_inbound_at  INTEGER NOT NULL,
    PRIMARY KEY (line, phone)
);
