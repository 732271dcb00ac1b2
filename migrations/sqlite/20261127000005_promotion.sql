-- Promotion: a sale window, sale price and per-user purchase limit on a SKU; the units each user
-- bought of a limited SKU; coupon templates and the coupons issued from them.

ALTER TABLE inventory ADD COLUMN sale_price_cents INTEGER NULL;
ALTER TABLE inventory ADD COLUMN sale_starts_at INTEGER NULL;
ALTER TABLE inventory ADD COLUMN sale_ends_at INTEGER NULL;
ALTER TABLE inventory ADD COLUMN per_user_limit INTEGER NULL;

-- Whether the item counted against its SKU's per-user limit when it was ordered: only those
-- units go back to the user's allowance when the order closes or is refunded before delivery.
-- (0 or 1: an integer, which both databases and the driver read alike.)
ALTER TABLE trade_order_item ADD COLUMN limit_counted INTEGER NOT NULL DEFAULT 0;

-- Units a user holds of a limited SKU: placed, paid or finished, not closed or returned.
CREATE TABLE user_sku_purchase (
    user_id    INTEGER NOT NULL,
    sku_id     INTEGER NOT NULL,
    units      INTEGER NOT NULL CHECK (units >= 0),
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, sku_id)
);

CREATE TABLE coupon_template (
    id                 INTEGER NOT NULL PRIMARY KEY,
    name               TEXT    NOT NULL,
    -- amount_off | percent_off
    kind               TEXT    NOT NULL,
    discount_cents     INTEGER NULL,
    percent_off        INTEGER NULL,
    max_discount_cents INTEGER NULL,
    min_spend_cents    INTEGER NOT NULL,
    total              INTEGER NOT NULL,
    issued             INTEGER NOT NULL,
    per_user_limit     INTEGER NOT NULL,
    claim_starts_at    INTEGER NULL,
    claim_ends_at      INTEGER NULL,
    valid_until        INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    CHECK (issued >= 0 AND issued <= total)
);

CREATE TABLE coupon_record (
    id          INTEGER NOT NULL PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    template_id INTEGER NOT NULL,
    -- The user's n-th coupon of the template: the unique key backs the per-user limit.
    seq         INTEGER NOT NULL CHECK (seq >= 1),
    -- unused | locked | used (expired is unused past valid_until)
    status      TEXT    NOT NULL,
    order_id    INTEGER NULL,
    valid_until INTEGER NOT NULL,
    used_at     INTEGER NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX coupon_record_claim ON coupon_record (user_id, template_id, seq);
CREATE INDEX coupon_record_template ON coupon_record (template_id);
