-- Order lifecycle: payments, unique by the provider's out_trade_no.

CREATE TABLE payment (
    out_trade_no TEXT    NOT NULL PRIMARY KEY,
    order_id     INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
    channel      TEXT    NOT NULL,
    -- paid | refund_required | refunded
    status       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX payment_order ON payment (order_id);

-- Recovery looks for leases by status across SKUs.
CREATE INDEX inventory_reservation_status ON inventory_reservation (status);
