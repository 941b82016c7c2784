//! A commit group's writes as one multi-row statement per table (issue #11 item 9): the rows
//! each table gets once every batch of the group is applied in order, so that a group of 64
//! one-task batches is ~5 statements, not ~6 per task.
//!
//! Pure: from the group's mutations to the final row of each key (the last write wins, as it
//! would applying them one by one). A multi-row `INSERT … ON CONFLICT DO UPDATE` may not touch
//! a row twice, so each key appears once; rows are in key order, so two transactions lock
//! shared rows in the same order.

use std::collections::BTreeMap;

use crate::store::Mutation;
use crate::store::records::{AttemptRecord, JobRunRecord, TaskRunRecord};

/// What a group writes, table by table, plus the mutations that are not merged (in order).
#[derive(Debug, Default)]
pub struct Merged<'a> {
    pub job_runs: Vec<&'a JobRunRecord>,
    /// Task runs written without a spec in the group (their `spec` column is kept).
    pub task_runs: Vec<&'a TaskRunRecord>,
    /// Task runs whose spec the group also writes: the spec rides on the row's upsert.
    pub task_runs_with_spec: Vec<(&'a TaskRunRecord, Option<&'a [u8]>)>,
    pub attempts: Vec<&'a AttemptRecord>,
    /// Specs of task runs the group does not write otherwise (a graceful stop's parking).
    pub specs: Vec<(u64, Option<&'a [u8]>)>,
    /// Letters whose effect the group commits (deleted).
    pub mail_read: Vec<i64>,
    /// Everything else, one statement each, in the group's order.
    pub rest: Vec<&'a Mutation>,
}

/// A group whose writes may be merged as one: one that counts running job runs
/// (`ActiveRunsBelow`) must see the job runs of the batches before it and not those after, so
/// its batches are merged each on its own, in order.
pub fn mergeable<'a>(mutations: impl IntoIterator<Item = &'a Mutation>) -> bool {
    !mutations.into_iter().any(|m| matches!(m, Mutation::ActiveRunsBelow(..)))
}

/// The final rows per table of a [`mergeable`] group, or of one batch.
pub fn merge<'a>(mutations: impl IntoIterator<Item = &'a Mutation>) -> Merged<'a> {
    let mut job_runs = BTreeMap::new();
    let mut task_runs = BTreeMap::new();
    let mut attempts = BTreeMap::new();
    let mut specs = BTreeMap::new();
    let mut merged = Merged::default();
    for m in mutations {
        match m {
            Mutation::JobRun(r) => drop(job_runs.insert(r.id, r)),
            Mutation::TaskRun(r) => drop(task_runs.insert(r.id, r)),
            Mutation::Attempt(a) => drop(attempts.insert((a.task_run, a.n), a)),
            Mutation::Spec(task_run, spec) => drop(specs.insert(*task_run, spec.as_deref())),
            Mutation::MailRead(_, ids) => merged.mail_read.extend(ids),
            other => merged.rest.push(other),
        }
    }
    for (id, record) in task_runs {
        match specs.remove(&id) {
            Some(spec) => merged.task_runs_with_spec.push((record, spec)),
            None => merged.task_runs.push(record),
        }
    }
    merged.job_runs = job_runs.into_values().collect();
    merged.attempts = attempts.into_values().collect();
    merged.specs = specs.into_iter().collect();
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskState;
    use crate::store::tests::job_run;

    fn task(id: u64, state: TaskState) -> Mutation {
        let mut r = TaskRunRecord::pending(id, 1, "j", "t", 1);
        r.state = state;
        Mutation::TaskRun(r)
    }

    fn attempt(task_run: u64, n: u32, at: u64) -> Mutation {
        Mutation::Attempt(AttemptRecord::started(task_run, 1, n, at))
    }

    #[test]
    fn the_last_write_of_each_row_wins_and_a_spec_rides_on_its_task_runs_row() {
        let group = [
            Mutation::JobRun(job_run(1)),
            task(12, TaskState::Queued),
            Mutation::Spec(12, Some(vec![1])),
            task(11, TaskState::Queued),
            attempt(11, 1, 5),
            task(11, TaskState::Running),
            attempt(11, 1, 6),
            Mutation::Spec(13, None),
            Mutation::MailRead(1, vec![7, 8]),
            Mutation::QueuePaused("q".into(), true),
            Mutation::MailRead(1, vec![9]),
            Mutation::Spec(12, Some(vec![2])),
        ];
        let merged = merge(&group);
        assert_eq!(merged.job_runs.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
        let states: Vec<(u64, TaskState)> = merged.task_runs.iter().map(|r| (r.id, r.state)).collect();
        assert_eq!(states, [(11, TaskState::Running)], "one row per task run, the last write");
        let with_spec: Vec<(u64, Option<&[u8]>)> = merged.task_runs_with_spec.iter().map(|(r, s)| (r.id, *s)).collect();
        assert_eq!(with_spec, [(12, Some(&[2u8][..]))], "the last spec, on the row's upsert");
        let attempts: Vec<(u64, u32, u64)> =
            merged.attempts.iter().map(|a| (a.task_run, a.n, a.started_at_ms)).collect();
        assert_eq!(attempts, [(11, 1, 6)]);
        assert_eq!(merged.specs, [(13, None)], "a spec alone is an update of its row");
        assert_eq!(merged.mail_read, [7, 8, 9]);
        assert!(matches!(merged.rest[..], [Mutation::QueuePaused(..)]));
    }

    #[test]
    fn rows_come_in_key_order_whatever_the_group_order() {
        let group = [task(30, TaskState::Queued), task(10, TaskState::Queued), task(20, TaskState::Queued)];
        let ids: Vec<u64> = merge(&group).task_runs.iter().map(|r| r.id).collect();
        assert_eq!(ids, [10, 20, 30]);
    }

    #[test]
    fn a_group_that_counts_running_job_runs_is_not_merged() {
        let counted = [Mutation::JobRun(job_run(1)), Mutation::ActiveRunsBelow("j".into(), 1)];
        assert!(!mergeable(&counted));
        assert!(mergeable(&[Mutation::JobRun(job_run(1)), task(1, TaskState::Queued)]));
    }
}
