-- Idempotency keys and trade numbers are compared byte for byte, as the actors and the
-- embedded database compare them: with the default case-insensitive collation `A` and `a`
-- would be one key to the unique index and two to everything else.
ALTER TABLE trade_order MODIFY idempotency_key VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE payment MODIFY out_trade_no VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
