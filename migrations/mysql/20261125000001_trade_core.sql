-- Trade core: SKU inventory with leases, orders with their items and status log.
-- Times are milliseconds since the Unix epoch (BIGINT), money is integer cents (BIGINT).

CREATE TABLE inventory (
    sku_id      BIGINT       NOT NULL PRIMARY KEY,
    name        VARCHAR(200) NOT NULL,
    price_cents BIGINT       NOT NULL,
    total       BIGINT       NOT NULL,
    available   BIGINT       NOT NULL,
    reserved    BIGINT       NOT NULL,
    sold        BIGINT       NOT NULL,
    -- Fences writers: every batch updates WHERE version = the version it loaded.
    version     BIGINT       NOT NULL,
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL,
    CONSTRAINT inventory_balanced CHECK (available + reserved + sold = total),
    CONSTRAINT inventory_non_negative CHECK (available >= 0 AND reserved >= 0 AND sold >= 0),
    CONSTRAINT inventory_price CHECK (price_cents >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE inventory_reservation (
    sku_id     BIGINT      NOT NULL,
    order_id   BIGINT      NOT NULL,
    quantity   BIGINT      NOT NULL,
    -- reserved | confirmed | released | expired
    status     VARCHAR(16) NOT NULL,
    expires_at BIGINT      NOT NULL,
    created_at BIGINT      NOT NULL,
    updated_at BIGINT      NOT NULL,
    PRIMARY KEY (sku_id, order_id),
    KEY inventory_reservation_order (order_id),
    KEY inventory_reservation_open (sku_id, status),
    CONSTRAINT inventory_reservation_quantity CHECK (quantity > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE trade_order (
    id              BIGINT      NOT NULL PRIMARY KEY,
    user_id         BIGINT      NOT NULL,
    -- pending_payment | paid | closed | finished | refunded
    status          VARCHAR(24) NOT NULL,
    total_cents     BIGINT      NOT NULL,
    discount_cents  BIGINT      NOT NULL,
    pay_cents       BIGINT      NOT NULL,
    coupon_id       BIGINT      NULL,
    idempotency_key VARCHAR(64) NOT NULL,
    request_hash    CHAR(64)    NOT NULL,
    pay_deadline    BIGINT      NOT NULL,
    version         BIGINT      NOT NULL,
    created_at      BIGINT      NOT NULL,
    updated_at      BIGINT      NOT NULL,
    UNIQUE KEY trade_order_idempotency (user_id, idempotency_key),
    KEY trade_order_user (user_id, id),
    KEY trade_order_deadline (status, pay_deadline),
    CONSTRAINT trade_order_amounts CHECK (pay_cents = total_cents - discount_cents AND pay_cents >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE trade_order_item (
    order_id    BIGINT       NOT NULL,
    line_no     BIGINT       NOT NULL,
    sku_id      BIGINT       NOT NULL,
    name        VARCHAR(200) NOT NULL,
    price_cents BIGINT       NOT NULL,
    quantity    BIGINT       NOT NULL,
    pay_cents   BIGINT       NOT NULL,
    PRIMARY KEY (order_id, line_no),
    KEY trade_order_item_sku (sku_id),
    CONSTRAINT trade_order_item_quantity CHECK (quantity > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE order_status_log (
    id          BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    order_id    BIGINT      NOT NULL,
    from_status VARCHAR(24) NULL,
    to_status   VARCHAR(24) NOT NULL,
    version     BIGINT      NOT NULL,
    created_at  BIGINT      NOT NULL,
    KEY order_status_log_order (order_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
