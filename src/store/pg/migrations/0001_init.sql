-- gaffer PostgreSQL schema 1 (CLUSTER-DESIGN.md). Records are the codec bytes redb stores
-- (version byte + postcard); the columns beside them are only what queries need.

-- One row per node; its lease is this row's lease_until, renewed by heartbeat (never a write
-- per task).
CREATE TABLE nodes (
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL UNIQUE,
    labels       text[]      NOT NULL DEFAULT '{}',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz NOT NULL,
    stopped      boolean     NOT NULL DEFAULT false
);

CREATE TABLE definitions (
    hash   bigint PRIMARY KEY,
    record bytea  NOT NULL
);

CREATE TABLE job_runs (
    id          bigint PRIMARY KEY,
    job         text   NOT NULL,
    state       text   NOT NULL,
    owner_node  bigint,
    owner_epoch bigint NOT NULL DEFAULT 0,
    record      bytea  NOT NULL
);

CREATE TABLE task_runs (
    id          bigint      PRIMARY KEY,
    job_run     bigint      NOT NULL,
    task        text        NOT NULL,
    iteration   integer     NOT NULL,
    item_index  integer,
    kind        smallint    NOT NULL,
    state       text        NOT NULL,
    queue       text        NOT NULL,
    sort_key    bigint      NOT NULL,
    enqueue_seq bigint      NOT NULL,
    not_before  timestamptz,
    requires    text[]      NOT NULL DEFAULT '{}',
    node        bigint,
    attempt     integer     NOT NULL,
    record      bytea       NOT NULL
);
-- What a claim walks: the ready rows of one queue, best first, FIFO among equals.
CREATE INDEX task_runs_ready ON task_runs (queue, sort_key DESC, enqueue_seq) WHERE state = 'queued';
-- What a cluster-wide cap counts. Only the capped claim may use it (never complete or renew:
-- RESULTS.md trap 3).
CREATE INDEX task_runs_running ON task_runs (queue) WHERE state = 'running';
-- The task runs of one job run, and the instances of one task in it.
CREATE INDEX task_runs_instances ON task_runs (job_run, task, iteration, item_index, kind);

CREATE TABLE attempts (
    task_run bigint  NOT NULL,
    n        integer NOT NULL,
    node     bigint,
    record   bytea   NOT NULL,
    PRIMARY KEY (task_run, n)
);

CREATE TABLE schedules (
    job    text  PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE paused_queues (
    queue text PRIMARY KEY
);

CREATE TABLE idempotency (
    key     text   PRIMARY KEY,
    job_run bigint NOT NULL
);

CREATE TABLE cache (
    key           text   PRIMARY KEY,
    expires_at_ms bigint NOT NULL,
    record        bytea  NOT NULL
);

CREATE TABLE raised_budgets (
    job_run bigint PRIMARY KEY,
    record  bytea  NOT NULL
);

-- Ids are reserved by blocks of 64 (`nextval` returns a block's first id), so a node hands
-- them out in memory and nodes never collide.
CREATE SEQUENCE job_run_ids INCREMENT BY 64;
CREATE SEQUENCE task_run_ids INCREMENT BY 64;
CREATE SEQUENCE enqueue_seqs INCREMENT BY 64;
