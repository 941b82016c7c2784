-- gaffer PostgreSQL schema: schedules that fire once across the cluster, the cluster's event
-- stream, and attempts' logs readable from any node (issue #11 items 5 and 6).

-- The fire time a schedule's record last handled: a node's fire is written only if it is later
-- (`model::schedule::fire_accepted`), in the transaction that creates its run.
ALTER TABLE schedules ADD COLUMN last_fired_ms bigint;

-- Every node's events, in commit order: written under `EVENTS_LOCK` (one writer at a time), so a
-- reader that saw `seq` never later finds a smaller one committed. `json` is the event's line.
CREATE TABLE events (
    seq     bigserial PRIMARY KEY,
    job_run bigint,
    at_ms   bigint    NOT NULL,
    json    text      NOT NULL
);
CREATE INDEX events_at ON events (at_ms);

-- Attempts' logs in chunks of at most 64 KiB, shipped while they run, so `logs` works from any
-- node, also after the node that ran the attempt is gone. `at`: the chunk's first byte's offset
-- in the log, so a reader asks for a range without reading what comes before it.
CREATE TABLE log_chunks (
    job_run  bigint  NOT NULL,
    task_run bigint  NOT NULL,
    attempt  integer NOT NULL,
    seq      integer NOT NULL,
    at       bigint  NOT NULL,
    bytes    bytea   NOT NULL,
    PRIMARY KEY (task_run, attempt, seq)
);
-- What retention removes: the chunks of job runs ended past `settings.retention`.
CREATE INDEX log_chunks_job_run ON log_chunks (job_run);
