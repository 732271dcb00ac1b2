-- Trade core: SKU inventory with leases, orders with their items and status log.
-- Times are milliseconds since the Unix epoch, money is integer cents.

CREATE TABLE inventory (
    sku_id      INTEGER NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    total       INTEGER NOT NULL,
    available   INTEGER NOT NULL CHECK (available >= 0),
    reserved    INTEGER NOT NULL CHECK (reserved >= 0),
    sold        INTEGER NOT NULL CHECK (sold >= 0),
    -- Fences writers: every batch updates WHERE version = the version it loaded.
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CHECK (available + reserved + sold = total)
);

CREATE TABLE inventory_reservation (
    sku_id     INTEGER NOT NULL,
    order_id   INTEGER NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    -- reserved | confirmed | released | expired
    status     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (sku_id, order_id)
);
CREATE INDEX inventory_reservation_order ON inventory_reservation (order_id);
CREATE INDEX inventory_reservation_open ON inventory_reservation (sku_id, status);

CREATE TABLE trade_order (
    id              INTEGER NOT NULL PRIMARY KEY,
    user_id         INTEGER NOT NULL,
    -- pending_payment | paid | closed | finished | refunded
    status          TEXT    NOT NULL,
    total_cents     INTEGER NOT NULL,
    discount_cents  INTEGER NOT NULL,
    pay_cents       INTEGER NOT NULL,
    coupon_id       INTEGER NULL,
    idempotency_key TEXT    NOT NULL,
    request_hash    TEXT    NOT NULL,
    pay_deadline    INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (user_id, idempotency_key),
    CHECK (pay_cents = total_cents - discount_cents AND pay_cents >= 0)
);
CREATE INDEX trade_order_user ON trade_order (user_id, id);
CREATE INDEX trade_order_deadline ON trade_order (status, pay_deadline);

CREATE TABLE trade_order_item (
    order_id    INTEGER NOT NULL,
    line_no     INTEGER NOT NULL,
    sku_id      INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    price_cents INTEGER NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    pay_cents   INTEGER NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX trade_order_item_sku ON trade_order_item (sku_id);

CREATE TABLE order_status_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id    INTEGER NOT NULL,
    from_status TEXT    NULL,
    to_status   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX order_status_log_order ON order_status_log (order_id);
