-- Adoption (issue #11 §3): the job runs not ended, by owner, so a node finds those of dead or
-- absent owners without walking every job run ever run.
CREATE INDEX job_runs_open_by_owner ON job_runs (owner_node) WHERE state = 'running';
