-- Rate limits and circuit breakers that hold across the cluster (issue 11 §2). A claim is an
-- attempt's start: each claim of a rate-limited queue writes one row per task run it took, and
-- each failure that counts for a queue's circuit (`model::queue::trips_circuit`) one row, at the
-- database's clock, so every node reads the same facts. Read, written and pruned (past
-- `model::queue::lookback`) under the queue's advisory lock, in the claim's transaction.
CREATE TABLE queue_marks (
    queue   text    NOT NULL,
    failure boolean NOT NULL,
    at_ms   bigint  NOT NULL
);
CREATE INDEX queue_marks_by_queue ON queue_marks (queue, failure, at_ms);

-- What `max_active_runs` and `overlap` count across the cluster: the running job runs of a job.
CREATE INDEX job_runs_running_by_job ON job_runs (job) WHERE state = 'running';
