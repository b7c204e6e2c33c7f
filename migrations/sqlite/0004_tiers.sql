-- Messaging-limit tiers: the current limit per portfolio (and where it came from), its
-- history, and the recipients a portfolio reached with business-initiated templates, each
-- with the time of its latest such send. A recipient counts against the moving 24 h window
-- while that time is inside it, so "distinct recipients in the last 24 h" is one indexed count.

CREATE TABLE portfolio_tiers (
    portfolio   TEXT    PRIMARY KEY,
    tier        TEXT    NOT NULL,
    source      TEXT    NOT NULL,                  -- config, api, business_capability_update, phone_number_quality_update
    changed_at  INTEGER NOT NULL
);

CREATE TABLE tier_changes (
    id          INTEGER PRIMARY KEY,
    portfolio   TEXT    NOT NULL,
    old_tier    TEXT,
    new_tier    TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    at          INTEGER NOT NULL
);

CREATE TABLE tier_recipients (
    portfolio     TEXT    NOT NULL,
    phone         TEXT    NOT NULL,
    last_sent_at  INTEGER NOT NULL,
    PRIMARY KEY (portfolio, phone)
);
CREATE INDEX tier_recipients_window ON tier_recipients (portfolio, last_sent_at);

-- Rows held back because the portfolio's budget was spent: shown as waiting_for_tier.
ALTER TABLE hopper ADD COLUMN waiting_for_tier INTEGER NOT NULL DEFAULT 0;
