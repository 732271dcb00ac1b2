-- Promotion: a sale window, sale price and per-user purchase limit on a SKU; the units each user
-- bought of a limited SKU; coupon templates and the coupons issued from them.

ALTER TABLE inventory
    ADD COLUMN sale_price_cents BIGINT NULL,
    ADD COLUMN sale_starts_at   BIGINT NULL,
    ADD COLUMN sale_ends_at     BIGINT NULL,
    ADD COLUMN per_user_limit   BIGINT NULL;

-- Whether the item counted against its SKU's per-user limit when it was ordered: only those
-- units go back to the user's allowance when the order closes or is refunded before delivery.
-- (0 or 1: an integer, which both databases and the driver read alike.)
ALTER TABLE trade_order_item ADD COLUMN limit_counted BIGINT NOT NULL DEFAULT 0;

-- Units a user holds of a limited SKU: placed, paid or finished, not closed or returned.
CREATE TABLE user_sku_purchase (
    user_id    BIGINT NOT NULL,
    sku_id     BIGINT NOT NULL,
    units      BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, sku_id),
    CONSTRAINT user_sku_purchase_units CHECK (units >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE coupon_template (
    id                 BIGINT       NOT NULL PRIMARY KEY,
    name               VARCHAR(200) NOT NULL,
    -- amount_off | percent_off
    kind               VARCHAR(16)  NOT NULL,
    discount_cents     BIGINT       NULL,
    percent_off        BIGINT       NULL,
    max_discount_cents BIGINT       NULL,
    min_spend_cents    BIGINT       NOT NULL,
    total              BIGINT       NOT NULL,
    issued             BIGINT       NOT NULL,
    per_user_limit     BIGINT       NOT NULL,
    claim_starts_at    BIGINT       NULL,
    claim_ends_at      BIGINT       NULL,
    valid_until        BIGINT       NOT NULL,
    created_at         BIGINT       NOT NULL,
    updated_at         BIGINT       NOT NULL,
    CONSTRAINT coupon_template_issued CHECK (issued >= 0 AND issued <= total)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE coupon_record (
    id          BIGINT      NOT NULL PRIMARY KEY,
    user_id     BIGINT      NOT NULL,
    template_id BIGINT      NOT NULL,
    -- The user's n-th coupon of the template: the unique key backs the per-user limit.
    seq         BIGINT      NOT NULL,
    -- unused | locked | used (expired is unused past valid_until)
    status      VARCHAR(16) NOT NULL,
    order_id    BIGINT      NULL,
    valid_until BIGINT      NOT NULL,
    used_at     BIGINT      NULL,
    created_at  BIGINT      NOT NULL,
    updated_at  BIGINT      NOT NULL,
    UNIQUE KEY coupon_record_claim (user_id, template_id, seq),
    KEY coupon_record_template (template_id),
    CONSTRAINT coupon_record_seq CHECK (seq >= 1)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
