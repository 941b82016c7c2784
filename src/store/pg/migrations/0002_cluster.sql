-- gaffer PostgreSQL schema 2: the cluster engine's live path (docs/cluster-design.md).

-- The next attempt of a queued task run, rendered by its job run's owner when it queued it
-- (codec bytes of `engine::cluster::QueuedSpec`): a node that claims it runs it as it is.
-- NULL: nothing to run elsewhere (the owner could not render it, and fails it itself).
ALTER TABLE task_runs ADD COLUMN spec bytea;

-- Mail between a job run's owner and the nodes running its attempts (`store::pg::mail`).
-- `to_node` NULL: to whoever owns `job_run` when it is read (so an adoption needs no
-- redirect); else to that node (kills).
CREATE TABLE node_mail (
    id       bigserial PRIMARY KEY,
    job_run  bigint    NOT NULL,
    to_node  bigint,
    task_run bigint    NOT NULL,
    attempt  integer   NOT NULL,
    kind     text      NOT NULL,
    body     bytea     NOT NULL
);
CREATE INDEX node_mail_to_owner ON node_mail (job_run, id) WHERE to_node IS NULL;
CREATE INDEX node_mail_to_node ON node_mail (to_node, id) WHERE to_node IS NOT NULL;
