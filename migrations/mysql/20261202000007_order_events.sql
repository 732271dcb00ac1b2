-- Order events: the transactional outbox. Every order transition (and every payment kept for
-- refund) writes one row in the transaction of the change; the relay publishes rows to a Redis
-- Stream at least once and stamps `published_at`. `id` is the `event_id` consumers deduplicate
-- on: assigned by the database in insert order and never reused.
CREATE TABLE order_event (
    id           BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    order_id     BIGINT        NOT NULL,
    -- placed | paid | closed | finished | refunded | refund_required
    kind         VARCHAR(24)   NOT NULL,
    -- a small JSON object
    body         VARCHAR(1024) NOT NULL,
    created_at   BIGINT        NOT NULL,
    published_at BIGINT        NULL,
    -- The relay's "unpublished, oldest first": one range of the index (published_at IS NULL).
    KEY order_event_unpublished (published_at, id),
    KEY order_event_order (order_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The admin's list of payments by status, newest first.
CREATE INDEX payment_status ON payment (status, created_at, out_trade_no);
