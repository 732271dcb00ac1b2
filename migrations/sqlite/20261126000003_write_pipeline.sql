-- Write pipeline: every activation of a SKU's actor takes a new owner epoch, and every write
-- of that actor must still find it; `version` goes on counting commits.
ALTER TABLE inventory ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
