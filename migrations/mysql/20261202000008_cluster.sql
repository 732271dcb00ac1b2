-- Cluster membership and range leases (used only when TIANJI_ADVERTISE_URL is set, on MariaDB).
-- A node heartbeats its `cluster_node` row; its snowflake worker id is unique among the rows, and a
-- row whose heartbeat is older than the lease TTL belongs to a dead node and may be claimed.
-- Each of the 64 ranges of the slot space (src/domain/slots.rs) is a lease row: taken and renewed
-- with conditional UPDATEs on the database clock; `epoch` grows with every take and fences every
-- commit of the range's keys. All times are milliseconds since the Unix epoch, database clock.
CREATE TABLE cluster_node (
    node_id      VARCHAR(64)  NOT NULL PRIMARY KEY,
    worker_id    BIGINT       NOT NULL,
    address      VARCHAR(255) NOT NULL,
    heartbeat_at BIGINT       NOT NULL,
    joined_at    BIGINT       NOT NULL,
    UNIQUE KEY cluster_node_worker (worker_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE cluster_range (
    range_id   BIGINT      NOT NULL PRIMARY KEY,
    -- the node_id holding the lease; NULL = never taken
    owner      VARCHAR(64) NULL,
    epoch      BIGINT      NOT NULL,
    expires_at BIGINT      NOT NULL,
    KEY cluster_range_owner (owner)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

INSERT INTO cluster_range (range_id, owner, epoch, expires_at) VALUES
    (0, NULL, 0, 0),
    (1, NULL, 0, 0),
    (2, NULL, 0, 0),
    (3, NULL, 0, 0),
    (4, NULL, 0, 0),
    (5, NULL, 0, 0),
    (6, NULL, 0, 0),
    (7, NULL, 0, 0),
    (8, NULL, 0, 0),
    (9, NULL, 0, 0),
    (10, NULL, 0, 0),
    (11, NULL, 0, 0),
    (12, NULL, 0, 0),
    (13, NULL, 0, 0),
    (14, NULL, 0, 0),
    (15, NULL, 0, 0),
    (16, NULL, 0, 0),
    (17, NULL, 0, 0),
    (18, NULL, 0, 0),
    (19, NULL, 0, 0),
    (20, NULL, 0, 0),
    (21, NULL, 0, 0),
    (22, NULL, 0, 0),
    (23, NULL, 0, 0),
    (24, NULL, 0, 0),
    (25, NULL, 0, 0),
    (26, NULL, 0, 0),
    (27, NULL, 0, 0),
    (28, NULL, 0, 0),
    (29, NULL, 0, 0),
    (30, NULL, 0, 0),
    (31, NULL, 0, 0),
    (32, NULL, 0, 0),
    (33, NULL, 0, 0),
    (34, NULL, 0, 0),
    (35, NULL, 0, 0),
    (36, NULL, 0, 0),
    (37, NULL, 0, 0),
    (38, NULL, 0, 0),
    (39, NULL, 0, 0),
    (40, NULL, 0, 0),
    (41, NULL, 0, 0),
    (42, NULL, 0, 0),
    (43, NULL, 0, 0),
    (44, NULL, 0, 0),
    (45, NULL, 0, 0),
    (46, NULL, 0, 0),
    (47, NULL, 0, 0),
    (48, NULL, 0, 0),
    (49, NULL, 0, 0),
    (50, NULL, 0, 0),
    (51, NULL, 0, 0),
    (52, NULL, 0, 0),
    (53, NULL, 0, 0),
    (54, NULL, 0, 0),
    (55, NULL, 0, 0),
    (56, NULL, 0, 0),
    (57, NULL, 0, 0),
    (58, NULL, 0, 0),
    (59, NULL, 0, 0),
    (60, NULL, 0, 0),
    (61, NULL, 0, 0),
    (62, NULL, 0, 0),
    (63, NULL, 0, 0);
