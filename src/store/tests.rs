use std::collections::BTreeMap;

use super::*;
use crate::model::{JobState, TaskState};

pub fn job_run(id: u64) -> JobRunRecord {
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
        sliced: false,
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

fn concurrent_commits_share_transactions(store: &dyn Store) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
    rt.block_on(async {
        let commits: Vec<_> = (1..=500).map(|i| store.commit(vec![Mutation::TaskRun(task_run(i, 1))])).collect();
        for c in commits {
            c.await.expect("commit");
        }
    });
    assert!(store.commit_count() < 500, "500 commits took {} transactions", store.commit_count());
    assert_eq!(store.snapshot().expect("snapshot").task_runs().expect("read").len(), 500);
}

/// A batch is handed over when `commit` is called, not when its answer is awaited: the later
/// call's batch is committed after the earlier one, though its answer is never awaited.
fn batches_commit_in_the_order_of_the_calls(store: &dyn Store) {
    let mut ended = job_run(1);
    ended.state = JobState::Succeeded;
    let first = store.commit(vec![Mutation::JobRun(job_run(1))]);
    let second = store.commit(vec![Mutation::JobRun(ended.clone())]);
    drop(second);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
    rt.block_on(first).expect("commit");
    store.commit_blocking(vec![]).expect("an empty commit behind both");
    assert_eq!(store.snapshot().expect("snapshot").job_run(1).expect("read"), Some(ended));
}

/// A snapshot sees what was committed before it, and nothing committed after.
fn a_snapshot_keeps_its_view(store: &dyn Store) {
    store.commit_blocking(vec![Mutation::JobRun(job_run(1))]).expect("commit");
    let before = store.snapshot().expect("snapshot");
    store.commit_blocking(vec![Mutation::JobRun(job_run(2)), Mutation::TaskRun(task_run(3, 2))]).expect("commit");
    assert_eq!(before.job_runs().expect("read"), [job_run(1)]);
    assert_eq!(before.task_run(3).expect("read"), None);
    let mut newest_first = Vec::new();
    let after = store.snapshot().expect("snapshot");
    after
        .each_job_run_newest_first(&mut |r| {
            newest_first.push(r.id);
            true
        })
        .expect("read");
    assert_eq!(newest_first, [2, 1]);
    assert_eq!(after.task_runs_of(2).expect("read"), [task_run(3, 2)]);
}

/// Ids of each sequence are distinct and increasing, over several of PostgreSQL's blocks.
fn ids_are_distinct_and_increasing(store: &dyn Store) {
    for next in [Store::next_job_run, Store::next_task_run, Store::next_enqueue_seq] {
        let ids: Vec<u64> = (0..200).map(|_| next(store)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}

/// The tests above, once on each backend (PostgreSQL's say so and pass when it is not installed).
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod on_redb {
            $(
                #[test]
                fn $test() {
                    let dir = crate::state_dir::private_tempdir();
                    let (store, _closer, _lock) = super::open_writer(dir.path()).expect("open");
                    super::$test(&store);
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $test() {
                    let Some(db) = crate::store::pg::testing::TestDb::get() else { return };
                    let store = crate::store::pg::PgBackend::open(&db.url, Default::default()).expect("open");
                    super::$test(&store);
                }
            )*
        }
    };
}

on_each_backend!(
    concurrent_commits_share_transactions,
    batches_commit_in_the_order_of_the_calls,
    a_snapshot_keeps_its_view,
    ids_are_distinct_and_increasing,
    instances_are_indexed_by_task_iteration_item_and_kind,
);

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
    let before = std::fs::read(dir.path().join("state.redb")).expect("read");
    let refused = open_writer(dir.path()).map(|_| ()).expect_err("a newer schema is refused");
    assert!(matches!(refused, StoreError::Schema { found } if found == SCHEMA_VERSION + 1), "{refused}");
    assert!(refused.to_string().contains("left as it is"), "{refused}");
    assert!(matches!(open_reader(dir.path()).map(|_| ()), Err(StoreError::Schema { .. })));
    let after = std::fs::read(dir.path().join("state.redb")).expect("read");
    assert!(before == after, "the refused file was written to");
}

/// The checked-in schema 1 store (made by gaffer before schema 2), copied into a private dir.
fn v1_fixture() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::state_dir::private_tempdir();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1/state.redb");
    let store = dir.path().join(STORE_FILE);
    std::fs::copy(fixture, &store).expect("copy fixture");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    dir
}

/// The schema recorded, and the layout byte of every task run as it lies on disk.
fn schema_and_layouts(dir: &Path) -> (Option<u64>, Vec<u8>) {
    let db = open_read_only(&StateDir::open(dir).expect("dir")).expect("open");
    let reader = Reader::new(&db).expect("reader");
    let table = reader.txn.open_table(TASK_RUNS).expect("task runs");
    let layouts = table.iter().expect("iter").map(|e| e.expect("entry").1.value()[0]).collect();
    (reader.schema().expect("schema"), layouts)
}

fn close(store: RedbStore, closer: StoreCloser) {
    drop(store);
    closer.close(std::time::Duration::from_secs(10));
}

#[test]
fn a_schema_1_store_is_read_as_it_is_and_migrated_once_by_the_writer() {
    let dir = v1_fixture();
    let original = std::fs::read(dir.path().join(STORE_FILE)).expect("read");
    let (schema, layouts) = schema_and_layouts(dir.path());
    assert_eq!(schema, Some(1));
    assert!(!layouts.is_empty() && layouts.iter().all(|&l| l == 1), "the fixture is layout 1: {layouts:?}");

    // A reader reads it without writing.
    let reader = open_reader(dir.path()).expect("a reader reads schema 1");
    let (jobs, tasks) = (reader.job_runs().expect("jobs"), reader.task_runs().expect("tasks"));
    let attempts = reader.attempts().expect("attempts");
    let analyze = tasks.iter().find(|t| t.task == "analyze").expect("analyze").clone();
    assert_eq!(reader.instances_of(analyze.job_run, "analyze").expect("instances"), vec![analyze.clone()]);
    drop(reader);
    assert!(std::fs::read(dir.path().join(STORE_FILE)).expect("read") == original, "a reader wrote to the file");

    // The writer migrates: schema 2, every task run rewritten in layout 2 and indexed.
    let (store, closer, lock) = open_writer(dir.path()).expect("the writer opens schema 1");
    let reader = store.reader().expect("reader");
    assert_eq!((reader.job_runs().expect("jobs"), reader.task_runs().expect("tasks")), (jobs.clone(), tasks.clone()));
    assert_eq!(reader.attempts().expect("attempts"), attempts);
    assert_eq!(reader.instances_of(analyze.job_run, "analyze").expect("instances"), vec![analyze.clone()]);
    let counts = reader.decode_all().expect("decode");
    let count = |table| counts.iter().find(|(t, _)| *t == table).map(|c| c.1);
    assert_eq!(count("task_instances"), Some(tasks.len() as u64), "{counts:?}");
    drop(reader);
    close(store, closer);
    drop(lock);
    let (schema, layouts) = schema_and_layouts(dir.path());
    assert_eq!(schema, Some(SCHEMA_VERSION));
    let current = <TaskRunRecord as codec::Record>::VERSION;
    assert!(layouts.len() == tasks.len() && layouts.iter().all(|&l| l == current), "{layouts:?}");

    // A second open finds schema 2 and migrates nothing: the records are the same bytes.
    let (store, closer, lock) = open_writer(dir.path()).expect("reopen");
    let reader = store.reader().expect("reader");
    assert_eq!(reader.task_runs().expect("tasks"), tasks);
    drop(reader);
    close(store, closer);
    drop(lock);
    assert_eq!(schema_and_layouts(dir.path()), (Some(SCHEMA_VERSION), layouts));
}

/// A migration is whole or not at all: a task run that cannot be read stops it, says which, and
/// leaves the file at schema 1 with every record as it was.
#[test]
fn a_migration_that_fails_changes_nothing() {
    let dir = v1_fixture();
    {
        let db = redb::Database::create(dir.path().join(STORE_FILE)).expect("open");
        let txn = db.begin_write().expect("txn");
        txn.open_table(TASK_RUNS).expect("task runs").insert(99, [1u8, 0xff, 0xff].as_slice()).expect("insert");
        txn.commit().expect("commit");
    }
    let before = schema_and_layouts(dir.path());
    let refused = open_writer(dir.path()).map(|_| ()).expect_err("an unreadable task run stops the migration");
    assert!(matches!(refused, StoreError::Migration { from: 1, .. }), "{refused}");
    let message = refused.to_string();
    assert!(message.contains("task run 99") && message.contains("Nothing was changed"), "{message}");
    assert_eq!(schema_and_layouts(dir.path()), before);
    assert_eq!(before.0, Some(1));
    assert!(before.1.iter().all(|&l| l == 1), "{before:?}");
}

fn instances_are_indexed_by_task_iteration_item_and_kind(store: &dyn Store) {
    let mut batch = vec![Mutation::JobRun(job_run(1))];
    for (id, task, iteration, item_index, kind) in [
        (1, "fetch", 1, Some(1), TaskRunKind::Task),
        (2, "fetch", 1, Some(0), TaskRunKind::Task),
        (3, "review", 2, None, TaskRunKind::Task),
        (4, "review", 1, None, TaskRunKind::Task),
        (5, "review", 1, None, TaskRunKind::Compensation),
        (6, "reviewer", 1, None, TaskRunKind::Task),
    ] {
        let r = TaskRunRecord { iteration, item_index, kind, ..TaskRunRecord::pending(id, 1, "report", task, 1) };
        batch.push(Mutation::TaskRun(r));
    }
    store.commit_blocking(batch).expect("commit");
    let reader = store.snapshot().expect("snapshot");
    let ids = |task| reader.instances_of(1, task).expect("instances").iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids("fetch"), [2, 1], "in item order");
    assert_eq!(ids("review"), [4, 5, 3], "by iteration, the compensation beside the run it undoes");
    assert_eq!(ids("reviewer"), [6]);
    assert!(reader.instances_of(2, "fetch").expect("other run").is_empty());
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

/// A task run written in layout 2 (before `requires`) reads as one that requires nothing, and
/// a layout 3 one keeps its labels.
#[test]
fn a_task_run_in_layout_2_reads_as_requiring_nothing() {
    let mut t = task_run(7, 3);
    t.reached_by = Some(crate::store::records::ReachedBy { from_task_run: 5, on: "failure".into() });
    let current = codec::encode(&t).expect("encode");
    // Layout 2 is exactly layout 3 of a run requiring nothing, minus that empty list's byte.
    assert_eq!(current.last(), Some(&0));
    let mut old = current[..current.len() - 1].to_vec();
    old[0] = 2;
    assert_eq!(codec::decode::<TaskRunRecord>(&old).expect("layout 2 reads"), t);
    let gpu = TaskRunRecord { requires: vec!["gpu".into(), "eu".into()], ..t };
    assert_eq!(codec::decode::<TaskRunRecord>(&codec::encode(&gpu).expect("encode")).expect("decode"), gpu);
}

/// A job run written in layout 1 (when every run made a task run of each of its tasks at once)
/// reads as `sliced`: its job is what it has task runs for, as it always was.
#[test]
fn a_job_run_in_layout_1_reads_as_sliced() {
    #[derive(serde::Serialize)]
    struct V1 {
        id: u64,
        job: String,
        definition: u64,
        params: BTreeMap<String, String>,
        state: JobState,
        reason: Option<String>,
        cost_usd_micros: u64,
        created_at_ms: u64,
        ended_at_ms: Option<u64>,
        cancel_requested: bool,
    }
    let j = job_run(3);
    let old = V1 {
        id: j.id,
        job: j.job.clone(),
        definition: j.definition,
        params: j.params.clone(),
        state: j.state,
        reason: j.reason.clone(),
        cost_usd_micros: j.cost_usd_micros,
        created_at_ms: j.created_at_ms,
        ended_at_ms: j.ended_at_ms,
        cancel_requested: j.cancel_requested,
    };
    let mut bytes = vec![1u8];
    bytes.extend(postcard::to_stdvec(&old).expect("encode"));
    let read: JobRunRecord = codec::decode(&bytes).expect("layout 1 reads");
    assert_eq!(read, JobRunRecord { sliced: true, ..j.clone() });
    assert_eq!(codec::decode::<JobRunRecord>(&codec::encode(&j).expect("encode")).expect("decode"), j);
}
