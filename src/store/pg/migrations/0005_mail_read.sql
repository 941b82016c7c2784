-- Mail read at least once (docs/cluster-design.md, "Mail"): a letter to a job run's owner is
-- marked with the owner epoch that read it, and deleted in the owner's commit that applied it.
-- An owner that dies in between leaves it for its adopter, whose epoch has not read it.
ALTER TABLE node_mail ADD COLUMN read_epoch bigint;
