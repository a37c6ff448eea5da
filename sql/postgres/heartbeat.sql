-- vigil's own heartbeat table (PostgreSQL).
--
-- The leader's sidecar upserts the single row every loop with its term (the
-- etcd revision of its leader key, a fencing token) and the time. Replicas
-- measure replication lag as now() minus the replicated `ts`; because the
-- row is written every loop, the figure stays right when the application
-- is idle. The write uses synchronous_commit = local so that the heartbeat
-- never waits for a synchronous standby.
CREATE SCHEMA IF NOT EXISTS vigil;
CREATE TABLE IF NOT EXISTS vigil.heartbeat (
    id    integer PRIMARY KEY CHECK (id = 1),
    node  text        NOT NULL,
    term  bigint      NOT NULL,
    ts    timestamptz NOT NULL
);
