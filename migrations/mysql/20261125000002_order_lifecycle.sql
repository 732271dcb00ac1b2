-- Order lifecycle: payments, unique by the provider's out_trade_no.

CREATE TABLE payment (
    out_trade_no VARCHAR(64) NOT NULL PRIMARY KEY,
    order_id     BIGINT      NOT NULL,
    amount_cents BIGINT      NOT NULL,
    channel      VARCHAR(32) NOT NULL,
    -- paid | refund_required | refunded
    status       VARCHAR(24) NOT NULL,
    created_at   BIGINT      NOT NULL,
    updated_at   BIGINT      NOT NULL,
    KEY payment_order (order_id),
    CONSTRAINT payment_amount CHECK (amount_cents >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Recovery looks for leases by status across SKUs.
CREATE INDEX inventory_reservation_status ON inventory_reservation (status);
