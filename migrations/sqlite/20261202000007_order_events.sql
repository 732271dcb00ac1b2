-- Order events: the transactional outbox. Every order transition (and every payment kept for
-- refund) writes one row in the transaction of the change; the relay publishes rows to a Redis
-- Stream at least once and stamps `published_at`. `id` is the `event_id` consumers deduplicate
-- on: AUTOINCREMENT, so an id is never reused even after the newest rows are deleted.
CREATE TABLE order_event (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id     INTEGER NOT NULL,
    -- placed | paid | closed | finished | refunded | refund_required
    kind         TEXT    NOT NULL,
    -- a small JSON object
    body         TEXT    NOT NULL CHECK (length(body) <= 1024),
    created_at   INTEGER NOT NULL,
    published_at INTEGER
);
-- The relay's "unpublished, oldest first": only unpublished rows are in it.
CREATE INDEX order_event_unpublished ON order_event (id) WHERE published_at IS NULL;
CREATE INDEX order_event_order ON order_event (order_id);

-- The admin's list of payments by status, newest first.
CREATE INDEX payment_status ON payment (status, created_at, out_trade_no);
