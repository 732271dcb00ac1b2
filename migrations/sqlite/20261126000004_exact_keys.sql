-- Idempotency keys and trade numbers are compared byte for byte (SQLite's default BINARY
-- collation already does; kept in step with the MySQL migrations).
SELECT 1;
