//! The job-run core's start path through the library: how many commits a one-task job run
//! makes before its task starts (SPEC §7: `running` + attempt durable before the spawn).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gaffer::config;
use gaffer::engine::{self, EngineConfig, SystemClock};
use gaffer::executor::LocalExecutor;
use gaffer::model::cost::Pricing;
use gaffer::store;

const WORKFLOW: &str = "[jobs.one.tasks.t]\nrun = 'true'\n";

/// The job run with its task run queued (one commit), then `running` with attempt 1 (one
/// commit), then the end (one): the pid rides on the end's commit instead of one of its own.
/// Each commit follows the one before (the claim waits for the queue entry, the end for the
/// spawn), so group commit cannot merge them and the count is exact.
#[test]
fn a_one_task_job_run_commits_twice_before_its_task_starts_and_once_at_its_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("w.toml");
    std::fs::write(&file, WORKFLOW).expect("write workflow");
    let workflow = config::parse(&file, WORKFLOW).expect("valid workflow");
    let state_dir = dir.path().join("state");
    let (store, closer, lock) = store::open_writer(&state_dir).expect("open state dir");
    let counter = store.clone();
    let config = EngineConfig {
        pricing: Pricing::new(config::pricing::builtin(), &workflow.pricing),
        workflow: Arc::new(workflow),
        source: WORKFLOW.to_string(),
        state_dir: std::path::absolute(Path::new(&state_dir)).expect("absolute path"),
        store: store.into(),
        location: store::StoreLocation::state_dir(&state_dir),
        executor: Arc::new(LocalExecutor),
        clock: Arc::new(SystemClock),
        workers: 2,
        labels: Vec::new(),
        cluster: None,
    };
    let system = actix::System::new();
    let commits: Vec<u64> = system.block_on(async move {
        let handle = engine::start(config);
        let mut events = handle.subscribe().await.expect("subscribe");
        let mut commits = Vec::new();
        for _ in 0..2 {
            // The first run also waits out what the engine commits once at start.
            let before = counter.commit_count();
            let id = handle.submit("one", BTreeMap::new()).await.expect("submit");
            loop {
                let event = events.recv().await.expect("event stream open");
                if event.job_run == Some(id)
                    && event.name().is_job()
                    && event.name() != gaffer::engine::EventName::JobStarted
                {
                    commits.push(counter.commit_count() - before);
                    break;
                }
            }
        }
        handle.shutdown().await;
        commits
    });
    drop(system);
    closer.close(Duration::from_secs(5));
    drop(lock);
    assert_eq!(commits[1], 3, "commits from submit to the job run's end: {commits:?}");
}
