//! The engine on the PostgreSQL store: a workflow with `needs` and a retry runs to its end with
//! real processes, everything committed through [`PgBackend`], and read back through a
//! snapshot of the database (and by `psql`, outside the code under test).

use std::sync::Arc;

use super::testing::TestDb;
use super::{PgBackend, PgOptions};
use crate::engine::seam_tests::{config_on, run_to_end};
use crate::model::{JobState, TaskState};
use crate::store::{Store, StoreHandle, StoreLocation};

#[test]
fn an_engine_runs_a_job_run_with_needs_and_a_retry_on_postgres() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let marker = dir.path().join("failed-once");
    let text = format!(
        r#"
[jobs.j.tasks.first]
run = "echo first"
[jobs.j.tasks.flaky]
needs = ["first"]
run = "test -e '{marker}' || {{ touch '{marker}'; exit 3; }}"
retry = {{ max_attempts = 2, initial_interval = "50ms", backoff = 1.0, jitter = 0.0 }}
[jobs.j.tasks.last]
needs = ["flaky"]
run = "echo last"
"#,
        marker = marker.display()
    );
    let backend = Arc::new(PgBackend::open(&db.url, PgOptions::default()).expect("open the pg store"));
    let mut config = config_on(dir.path(), &text, StoreHandle::new(backend.clone()));
    config.workers = 2;
    let (ended, views) = run_to_end(config, "j");
    let [(id, JobState::Succeeded)] = ended[..] else { panic!("{ended:?} {views:?}") };
    assert_eq!(views.len(), 3, "{views:?}");

    let snapshot = backend.snapshot().expect("snapshot");
    let job_run = snapshot.job_run(id).expect("read").expect("the job run is in postgres");
    assert_eq!(job_run.state, JobState::Succeeded);
    let task_runs = snapshot.task_runs_of(id).expect("read");
    let states: Vec<_> = task_runs.iter().map(|t| (t.task.as_str(), t.state, t.attempt)).collect();
    assert_eq!(
        states,
        [("first", TaskState::Succeeded, 1), ("flaky", TaskState::Succeeded, 2), ("last", TaskState::Succeeded, 1)]
    );
    let flaky = &task_runs[1];
    let attempts = snapshot.attempts_of(flaky.id).expect("read");
    assert_eq!(attempts.iter().map(|a| (a.n, a.exit_code)).collect::<Vec<_>>(), [(1, Some(3)), (2, Some(0))]);
    assert!(task_runs.windows(2).all(|w| w[0].enqueue_seq < w[1].enqueue_seq), "enqueued in order of needs");
    let definition = snapshot.definition(job_run.definition).expect("read").expect("its definition");
    assert_eq!(definition.source, text);
    drop(snapshot);
    let elsewhere = StoreLocation::Postgres(db.url.clone()).snapshot().expect("a reader's snapshot");
    assert_eq!(elsewhere.job_run(id).expect("read"), Some(job_run), "read by a reader of its own");
    assert_eq!(elsewhere.attempts().expect("read").len(), 4);
    drop(elsewhere);
    // `gaffer tui --store` with no node here: the read-only views over the same database.
    let offline = crate::engine::OfflineEngine::open(&StoreLocation::Postgres(db.url.clone())).expect("offline");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let seen = runtime.block_on(crate::engine::Control::snapshot(&offline)).expect("its snapshot");
    assert_eq!(seen.task_runs.len(), 3, "{seen:?}");
    assert!(seen.job_runs.iter().any(|j| j.id == id), "{seen:?}");

    // The rows are really in the database, seen by another client.
    let sql = format!("SELECT state FROM job_runs WHERE id = {id}; SELECT count(*) FROM attempts");
    let out = db.psql(&sql);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["succeeded", "4"], "{out}");
    assert!(backend.commit_count() >= 2, "the run was committed through the store");
}
