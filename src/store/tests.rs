use std::collections::BTreeMap;

use super::*;
use crate::model::{JobState, TaskState};

fn job_run(id: u64) -> JobRunRecord {
    JobRunRecord {
        id,
        job: "report".into(),
        definition: 7,
        params: BTreeMap::from([("topic".into(), "rust".into())]),
        state: JobState::Running,
        reason: None,
        cost_usd_micros: 12_300,
        created_at_ms: 1,
        ended_at_ms: None,
        cancel_requested: false,
    }
}

pub fn task_run(id: u64, job_run: u64) -> TaskRunRecord {
    let mut t = TaskRunRecord::pending(id, job_run, "report", &format!("t{id}"), 1);
    t.state = TaskState::Queued;
    t.queued_at_ms = Some(5);
    t.enqueue_seq = id;
    t
}

#[test]
fn records_survive_reopen_and_sequences_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closer = {
        let (store, closer, _lock) = open_writer(dir.path()).expect("open");
        let j = store.ids.next_job_run();
        let t1 = store.ids.next_task_run();
        let t2 = store.ids.next_task_run();
        store
            .commit_blocking(vec![
                Mutation::JobRun(job_run(j)),
                Mutation::TaskRun(task_run(t1, j)),
                Mutation::TaskRun(task_run(t2, j)),
            ])
            .expect("commit");
        closer
    };
    // The store thread closes the file once it sees the handle gone; a busy machine may not
    // have run it yet (the reopen then found the file still open: `InUse`).
    closer.close(std::time::Duration::from_secs(10));
    let (store, _closer, _lock) = open_writer(dir.path()).expect("reopen");
    assert_eq!(store.ids.next_job_run(), 2, "ids are never reused");
    assert_eq!(store.ids.next_task_run(), 3);
    let reader = store.reader().expect("reader");
    assert_eq!(reader.job_run(1).expect("read"), Some(job_run(1)));
    assert_eq!(reader.task_runs_of(1).expect("read").len(), 2);
}

#[test]
fn second_writer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, _closer, _lock) = open_writer(dir.path()).expect("open");
    match open_writer(dir.path()) {
        Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn reader_sees_commits_while_writer_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _closer, _lock) = open_writer(dir.path()).expect("open");
    store.commit_blocking(vec![Mutation::JobRun(job_run(1))]).expect("commit");
    let reader = open_reader(dir.path()).expect("reader");
    assert_eq!(reader.job_runs().expect("read").len(), 1);
}

#[test]
fn concurrent_commits_share_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _closer, _lock) = open_writer(dir.path()).expect("open");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
    rt.block_on(async {
        let commits: Vec<_> = (1..=500).map(|i| store.commit(vec![Mutation::TaskRun(task_run(i, 1))])).collect();
        for c in commits {
            c.await.expect("commit");
        }
    });
    assert!(store.commit_count() < 500, "500 commits took {} transactions", store.commit_count());
    assert_eq!(store.reader().expect("reader").task_runs().expect("read").len(), 500);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = redb::Database::create(dir.path().join("state.redb")).expect("create");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META).expect("meta").insert("schema_version", SCHEMA_VERSION + 1).expect("insert");
        txn.commit().expect("commit");
    }
    assert!(matches!(open_writer(dir.path()), Err(StoreError::Schema { .. })));
}
