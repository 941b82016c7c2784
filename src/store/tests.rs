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
    let dir = crate::state_dir::private_tempdir();
    {
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
        // The store thread may still hold the file for a moment after its last answer.
        drop(store);
        closer.close(std::time::Duration::from_secs(10));
    }
    let (store, _closer, _lock) = open_writer(dir.path()).expect("reopen");
    assert_eq!(store.ids.next_job_run(), 2, "ids are never reused");
    assert_eq!(store.ids.next_task_run(), 3);
    let reader = store.reader().expect("reader");
    assert_eq!(reader.job_run(1).expect("read"), Some(job_run(1)));
    assert_eq!(reader.task_runs_of(1).expect("read").len(), 2);
}

#[test]
fn second_writer_is_refused() {
    let dir = crate::state_dir::private_tempdir();
    let (_store, _closer, _lock) = open_writer(dir.path()).expect("open");
    match open_writer(dir.path()) {
        Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn reader_sees_commits_while_writer_is_open() {
    let dir = crate::state_dir::private_tempdir();
    let (store, _closer, _lock) = open_writer(dir.path()).expect("open");
    store.commit_blocking(vec![Mutation::JobRun(job_run(1))]).expect("commit");
    let reader = open_reader(dir.path()).expect("reader");
    assert_eq!(reader.job_runs().expect("read").len(), 1);
}

#[test]
fn concurrent_commits_share_transactions() {
    let dir = crate::state_dir::private_tempdir();
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
    let dir = crate::state_dir::private_tempdir();
    {
        let db = redb::Database::create(dir.path().join("state.redb")).expect("create");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META).expect("meta").insert("schema_version", SCHEMA_VERSION + 1).expect("insert");
        txn.commit().expect("commit");
    }
    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(dir.path().join("state.redb"), private).expect("chmod");
    assert!(matches!(open_writer(dir.path()), Err(StoreError::Schema { .. })));
}

/// An attempt written in layout 1 (before cache tokens and spending by model) still reads, its
/// spending filed under its one model.
#[test]
fn an_attempt_in_layout_1_reads_as_the_current_layout() {
    #[derive(serde::Serialize)]
    struct V1 {
        task_run: u64,
        job_run: u64,
        n: u32,
        pid: Option<u32>,
        pgid: Option<i32>,
        start_ticks: u64,
        started_at_ms: u64,
        ended_at_ms: Option<u64>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: Option<crate::model::FailReason>,
        detail: Option<String>,
        cost_usd_micros: u64,
        input_tokens: u64,
        output_tokens: u64,
        model: Option<String>,
        log: String,
    }
    let old = V1 {
        task_run: 2,
        job_run: 1,
        n: 1,
        pid: Some(42),
        pgid: Some(42),
        start_ticks: 7,
        started_at_ms: 10,
        ended_at_ms: Some(20),
        exit_code: Some(0),
        signal: None,
        reason: None,
        detail: None,
        cost_usd_micros: 8_700,
        input_tokens: 1200,
        output_tokens: 340,
        model: Some("claude-sonnet-4-5".into()),
        log: "logs/1/2.1.log".into(),
    };
    let mut bytes = vec![1u8];
    bytes.extend(postcard::to_stdvec(&old).expect("encode"));
    let a: AttemptRecord = codec::decode(&bytes).expect("layout 1 reads");
    assert_eq!((a.task_run, a.n, a.pid, a.ended_at_ms, a.log.as_str()), (2, 1, Some(42), Some(20), "logs/1/2.1.log"));
    assert_eq!((a.cost_usd_micros, a.input_tokens, a.output_tokens, a.cache_read_tokens), (8_700, 1200, 340, 0));
    assert_eq!(a.by_model.len(), 1);
    assert_eq!((a.by_model[0].label(), a.by_model[0].usage.usd_micros), ("claude-sonnet-4-5", 8_700));
    assert_eq!(codec::decode::<AttemptRecord>(&codec::encode(&a).expect("encode")).expect("decode"), a);
    let newer = [9u8, 0];
    assert!(codec::decode::<AttemptRecord>(&newer).is_err(), "a newer layout is refused, not misread");
}
