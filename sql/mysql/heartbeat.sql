-- vigil's own heartbeat table (MariaDB / MySQL).
--
-- The leader's sidecar upserts the single row every loop with its term (the
-- etcd revision of its leader key, a fencing token) and the time, with
-- microseconds. Replicas measure replication lag as NOW(6) minus the
-- replicated `ts` (both clocks must be in step; `vigil doctor` checks), so
-- the figure grows while the applier is stopped or behind, and stays right
-- when the application is idle. The statements are separated by ';' and
-- run one by one.
CREATE DATABASE IF NOT EXISTS vigil;
CREATE TABLE IF NOT EXISTS vigil.heartbeat (
    id    INT          NOT NULL PRIMARY KEY,
    node  VARCHAR(255) NOT NULL,
    term  BIGINT       NOT NULL,
    ts    TIMESTAMP(6) NOT NULL
) ENGINE = InnoDB
