-- tiercast foundation schema (SQLite). Times are unix milliseconds (INTEGER) so the same SQL
-- runs on PostgreSQL (BIGINT); extra contact fields are a JSON object in TEXT.

CREATE TABLE contacts (
    id              INTEGER PRIMARY KEY,
    phone           TEXT    NOT NULL UNIQUE,          -- E.164, '+5511987654321'
    name            TEXT,
    email           TEXT,
    opt_in          INTEGER NOT NULL DEFAULT 0,       -- 0 / 1
    opt_in_source   TEXT,                             -- 'import', 'csv', 'api', 'webhook'; NULL = never stated
    country         TEXT,                             -- ISO 3166 alpha-2 from the CSV, if given
    fields          TEXT    NOT NULL DEFAULT '{}',    -- other CSV columns, JSON object of strings
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE lists (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- One row per import of a file into a list: the run id stamps memberships, which tells a
-- duplicate inside the file from a contact already on the list.
CREATE TABLE imports (
    id           INTEGER PRIMARY KEY,
    list_id      INTEGER NOT NULL REFERENCES lists(id),
    source       TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    imported     INTEGER NOT NULL DEFAULT 0,
    updated      INTEGER NOT NULL DEFAULT 0,
    duplicate    INTEGER NOT NULL DEFAULT 0,
    invalid      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE list_members (
    list_id     INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    contact_id  INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    import_id   INTEGER NOT NULL,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (list_id, contact_id)
);
CREATE INDEX list_members_contact ON list_members(contact_id);

-- Keyed by phone, not contact: a number that opted out stays out even if it is imported later.
CREATE TABLE opt_outs (
    phone       TEXT    PRIMARY KEY,
    reason      TEXT    NOT NULL,
    source      TEXT    NOT NULL,                     -- 'keyword', 'answer', 'user_preferences', '131050', 'api'
    created_at  INTEGER NOT NULL
);

CREATE TABLE blacklist (
    phone       TEXT    PRIMARY KEY,
    reason      TEXT,
    created_at  INTEGER NOT NULL
);

CREATE TABLE campaigns (
    id             INTEGER PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    state          TEXT    NOT NULL DEFAULT 'draft'
                   CHECK (state IN ('draft', 'running', 'paused', 'stopped', 'completed')),
    paused_reason  TEXT,
    started_at     INTEGER,
    finished_at    INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE hopper (
    id                  INTEGER PRIMARY KEY,
    campaign_id         INTEGER NOT NULL REFERENCES campaigns(id),
    contact_id          INTEGER NOT NULL REFERENCES contacts(id),
    line                TEXT    NOT NULL,
    state               TEXT    NOT NULL CHECK (state IN ('fresh', 'retry', 'pending', 'closed')),
    outcome             TEXT,
    answer              TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    inflight_attempt_id INTEGER,                      -- set while a send's fate is unknown
    last_error_code     INTEGER,
    last_error_text     TEXT,
    wamid               TEXT,
    wa_id               TEXT,
    message_status      TEXT,                         -- sent / delivered / read / failed
    sent_at             INTEGER,
    delivered_at        INTEGER,
    read_at             INTEGER,
    response_deadline   INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    closed_at           INTEGER,
    UNIQUE (campaign_id, contact_id),
    CHECK ((state = 'closed') = (outcome IS NOT NULL))
);
-- The dispatcher's claim: due rows of a campaign, oldest first. Partial, so closed rows
-- (most of a finished campaign) cost nothing.
CREATE INDEX hopper_due ON hopper (campaign_id, next_attempt_at) WHERE state IN ('fresh', 'retry');
CREATE INDEX hopper_pending ON hopper (response_deadline) WHERE state = 'pending';
CREATE INDEX hopper_wamid ON hopper (wamid);
CREATE INDEX hopper_contact ON hopper (contact_id, line);

CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    hopper_id    INTEGER NOT NULL REFERENCES hopper(id),
    campaign_id  INTEGER NOT NULL REFERENCES campaigns(id),
    line         TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('sending', 'accepted', 'failed', 'unknown', 'abandoned')),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    wamid        TEXT,
    error_code   INTEGER,
    error_class  TEXT,
    error_text   TEXT
);
CREATE INDEX attempts_hopper ON attempts (hopper_id);

CREATE TABLE templates (
    id                INTEGER PRIMARY KEY,
    line              TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    language          TEXT    NOT NULL,
    provider_id       TEXT,
    category          TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    quality           TEXT,
    parameter_format  TEXT    NOT NULL DEFAULT 'POSITIONAL',
    components        TEXT    NOT NULL,               -- the provider's JSON, as fetched
    synced_at         INTEGER NOT NULL,
    UNIQUE (line, name, language)
);
