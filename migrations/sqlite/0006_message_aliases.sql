-- Other ids of one outbound message. A Gupshup send answers with Gupshup's own id (stored as
-- the row's wamid), while its late delivery reports, and replies that quote it, may carry only
-- the WhatsApp id; the enqueued event (or a v3 status) tells us both, and this table lets
-- those later events find the row.
CREATE TABLE message_aliases (
    alias       TEXT    PRIMARY KEY,
    wamid       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
