//! The job-run core's start path through the library: how many commits a job run makes before
//! its task starts (SPEC §7: `running` + attempt durable before the spawn). A task that finds a
//! worker idle at submit is claimed in the submit's own commit (`dispatcher::Reserve`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gaffer::config;
use gaffer::engine::{self, EngineConfig, EngineEvent, EngineHandle, EventName, SystemClock};
use gaffer::executor::LocalExecutor;
use gaffer::model::cost::Pricing;
use gaffer::store;

const WORKFLOW: &str = "[jobs.one.tasks.t]\nrun = 'true'\n";

/// Runs `body` against an engine with `workers` over `workflow`, in a temp folder that is the
/// tasks' cwd; `body` gets the handle, its events, the store's commit counter and the folder.
fn with_engine<T: 'static>(
    workflow: &str,
    workers: usize,
    body: impl AsyncFnOnce(&EngineHandle, &mut Events, &store::StoreHandle, PathBuf) -> T,
) -> T {
    let dir = tempfile::tempdir().expect("temp dir");
    let folder = std::path::absolute(dir.path()).expect("absolute path");
    let file = folder.join("w.toml");
    std::fs::write(&file, workflow).expect("write workflow");
    let parsed = config::parse(&file, workflow).expect("valid workflow");
    let state_dir = folder.join("state");
    let (store, closer, lock) = store::open_writer(&state_dir).expect("open state dir");
    let counter: store::StoreHandle = store.into();
    let config = EngineConfig {
        pricing: Pricing::new(config::pricing::builtin(), &parsed.pricing),
        workflow: Arc::new(parsed),
        source: workflow.to_string(),
        state_dir: std::path::absolute(Path::new(&state_dir)).expect("absolute path"),
        store: counter.clone(),
        location: store::StoreLocation::state_dir(&state_dir),
        executor: Arc::new(LocalExecutor),
        clock: Arc::new(SystemClock),
        workers,
        labels: Vec::new(),
        cluster: None,
    };
    let system = actix::System::new();
    let out = system.block_on(async move {
        let handle = engine::start(config);
        let mut events = Events(handle.subscribe().await.expect("subscribe"));
        let out = body(&handle, &mut events, &counter, folder).await;
        handle.shutdown().await;
        out
    });
    drop(system);
    closer.close(Duration::from_secs(5));
    drop(lock);
    out
}

struct Events(tokio::sync::mpsc::UnboundedReceiver<EngineEvent>);

impl Events {
    /// The next event of job run `id` named `name`, within 30 s.
    async fn next(&mut self, id: u64, name: EventName) -> EngineEvent {
        let wait = async {
            loop {
                let event = self.0.recv().await.expect("event stream open");
                if event.job_run == Some(id) && event.name() == name {
                    return event;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait).await.unwrap_or_else(|_| panic!("no {name:?} of j{id}"))
    }
}

/// The job run with its task run already `running` with attempt 1 (one commit: a worker was
/// idle at submit), then the end (one): the pid rides on the end's commit instead of one of
/// its own. Each commit follows the one before (the end waits for the spawn), so group commit
/// cannot merge them and the count is exact.
#[test]
fn a_one_task_job_run_commits_once_before_its_task_starts_and_once_at_its_end() {
    let commits = with_engine(WORKFLOW, 2, async |handle, events, counter, _| {
        let mut commits = Vec::new();
        for _ in 0..2 {
            // The first run also waits out what the engine commits once at start.
            let before = counter.commit_count();
            let id = handle.submit("one", BTreeMap::new()).await.expect("submit");
            events.next(id, EventName::JobSucceeded).await;
            commits.push(counter.commit_count() - before);
        }
        commits
    });
    assert_eq!(commits[1], 2, "commits from submit to the job run's end: {commits:?}");
}

/// A task that waits for the file `name` in its cwd to exist.
fn gated(name: &str) -> String {
    format!("while [ ! -e {name} ]; do sleep 0.01; done")
}

/// Counted at `task.started` (the task holds until the test lets it end): one commit when a
/// worker was idle at submit, the job run's records and both entry tasks `running` together.
#[test]
fn tasks_that_find_workers_idle_at_submit_start_after_the_submits_one_commit() {
    let workflow =
        format!("[jobs.two.tasks.a]\nrun = '{}'\n[jobs.two.tasks.b]\nrun = '{}'\n", gated("go"), gated("go"));
    let (at_start, at_end) = with_engine(&workflow, 4, async |handle, events, counter, folder| {
        let warm = handle.submit("two", BTreeMap::new()).await.expect("submit");
        std::fs::write(folder.join("go"), "").expect("go");
        events.next(warm, EventName::JobSucceeded).await;
        std::fs::remove_file(folder.join("go")).expect("rm go");

        let before = counter.commit_count();
        let id = handle.submit("two", BTreeMap::new()).await.expect("submit");
        events.next(id, EventName::TaskStarted).await;
        events.next(id, EventName::TaskStarted).await;
        let at_start = counter.commit_count() - before;
        std::fs::write(folder.join("go"), "").expect("go");
        events.next(id, EventName::JobSucceeded).await;
        (at_start, counter.commit_count() - before)
    });
    assert_eq!(at_start, 1, "commits before both tasks started");
    assert!(at_end <= 3, "then each end (merged when they end together): {at_end}");
}

/// No worker idle at submit (the only one is busy): the task waits in its queue and starts
/// through the ordinary claim once the worker is free; a reservation never takes a busy slot.
#[test]
fn a_task_submitted_while_every_worker_is_busy_waits_and_then_runs() {
    let workflow = format!("[jobs.hold.tasks.t]\nrun = '{}'\n[jobs.one.tasks.t]\nrun = 'true'\n", gated("go"));
    with_engine(&workflow, 1, async |handle, events, _, folder| {
        let busy = handle.submit("hold", BTreeMap::new()).await.expect("submit");
        events.next(busy, EventName::TaskStarted).await;
        let id = handle.submit("one", BTreeMap::new()).await.expect("submit");
        events.next(id, EventName::TaskQueued).await;
        let early = tokio::time::timeout(Duration::from_millis(300), events.next(id, EventName::TaskStarted)).await;
        assert!(early.is_err(), "started while the only worker was busy");
        std::fs::write(folder.join("go"), "").expect("go");
        events.next(busy, EventName::JobSucceeded).await;
        events.next(id, EventName::JobSucceeded).await;
    });
}

/// A queue's concurrency holds for reserved starts too: with 4 idle workers and a queue of
/// concurrency 1, one of the two entry tasks starts at submit, the other once it ended.
#[test]
fn a_reserved_start_keeps_within_the_queues_concurrency() {
    let workflow = format!(
        "[queues.one]\nconcurrency = 1\n[jobs.two.tasks.a]\nqueue = 'one'\nrun = '{}'\n\
         [jobs.two.tasks.b]\nqueue = 'one'\nrun = '{}'\n",
        gated("go"),
        gated("go")
    );
    with_engine(&workflow, 4, async |handle, events, _, folder| {
        let id = handle.submit("two", BTreeMap::new()).await.expect("submit");
        let first = events.next(id, EventName::TaskStarted).await;
        let early = tokio::time::timeout(Duration::from_millis(300), events.next(id, EventName::TaskStarted)).await;
        assert!(early.is_err(), "a second task of a queue of concurrency 1 started");
        std::fs::write(folder.join("go"), "").expect("go");
        let second = events.next(id, EventName::TaskStarted).await;
        assert_ne!(first.task_run, second.task_run);
        events.next(id, EventName::JobSucceeded).await;
    });
}

/// A task whose spec has templates renders off the engine thread: reserved at submit, it
/// goes to its worker through the ordinary claim (its own commit) and runs rendered, once.
#[test]
fn a_templated_task_reserved_at_submit_is_claimed_the_ordinary_way() {
    let workflow = "[jobs.greet]\nparams = { who = 'world' }\n[jobs.greet.tasks.t]\n\
                    env = { WHO = '{{ params.who }}' }\nrun = 'echo \"$WHO\" >> said'\n";
    let (commits, said) = with_engine(workflow, 2, async |handle, events, counter, folder| {
        let warm = handle.submit("greet", BTreeMap::new()).await.expect("submit");
        events.next(warm, EventName::JobSucceeded).await;
        let before = counter.commit_count();
        let id = handle.submit("greet", BTreeMap::from([("who".into(), "you".into())])).await.expect("submit");
        events.next(id, EventName::JobSucceeded).await;
        (counter.commit_count() - before, std::fs::read_to_string(folder.join("said")).expect("said"))
    });
    assert_eq!(said, "world\nyou\n", "each run's task ran once, rendered");
    assert_eq!(commits, 3, "the submit, the ordinary claim, the end");
}

/// A cancel that reaches the job run while its first commit (the reserved task `running` in it)
/// is under way: the kill waits behind the worker's claim and stops the process once it exists,
/// rather than reaching a worker with nothing running yet and being lost.
#[test]
fn a_cancel_sent_with_the_submit_stops_its_reserved_task() {
    let workflow = "[jobs.long.tasks.t]\nrun = 'sleep 30'\n";
    with_engine(workflow, 2, async |handle, events, _, _| {
        let cancel = async {
            tokio::task::yield_now().await;
            handle.cancel(engine::Target::JobRun(1)).await
        };
        let (submitted, cancelled) = tokio::join!(handle.submit("long", BTreeMap::new()), cancel);
        let id = submitted.expect("submit");
        assert_eq!(id, 1, "the first job run of a fresh state dir");
        if cancelled.is_err() {
            // It came before the job run existed: then once it does.
            handle.cancel(engine::Target::JobRun(id)).await.expect("cancel");
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), events.next(id, EventName::JobCancelled)).await;
        assert!(ended.is_ok(), "the task kept running after its job run was cancelled");
    });
}

/// `gaffer run`'s jobs, submitted together (`EngineHandle::submit_many`): their ids follow the
/// order given, each run is the job named, and their first commits join one another's group
/// instead of each waiting for the one before (one submit at a time makes exactly one commit
/// per job run here: every task waits at its gate, so nothing else commits meanwhile).
#[test]
fn job_runs_submitted_together_take_ids_in_order_and_share_their_first_commits() {
    const JOBS: usize = 20;
    let names: Vec<String> = (0..JOBS).map(|i| format!("j{i:02}")).collect();
    // Listed in reverse in the file: the order given decides the ids, not the file's.
    let workflow: String =
        names.iter().rev().map(|n| format!("[jobs.{n}.tasks.t]\nrun = '{}'\n", gated("go"))).collect();
    let (ids, commits, jobs_of) = with_engine(&workflow, 4, async |handle, events, counter, folder| {
        let warm = handle.submit("j00", BTreeMap::new()).await.expect("submit");
        std::fs::write(folder.join("go"), "").expect("go");
        events.next(warm, EventName::JobSucceeded).await;
        std::fs::remove_file(folder.join("go")).expect("rm go");

        let before = counter.commit_count();
        let jobs = names.iter().map(|n| (n.clone(), BTreeMap::new())).collect();
        let ids = handle.submit_many(jobs).await.expect("submit many");
        let commits = counter.commit_count() - before;
        std::fs::write(folder.join("go"), "").expect("go");
        let mut jobs_of = BTreeMap::new();
        // They end in any order: each job run's end, as it comes.
        while jobs_of.len() < ids.len() {
            let event = tokio::time::timeout(Duration::from_secs(30), events.0.recv()).await;
            let event = event.expect("every job run ends within 30 s").expect("event stream open");
            if let (EventName::JobSucceeded, Some(id)) = (event.name(), event.job_run) {
                jobs_of.insert(id, event.job.expect("a job event names its job"));
            }
        }
        (ids, commits, jobs_of)
    });
    assert_eq!(ids.len(), JOBS);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in the order given: {ids:?}");
    let jobs: Vec<String> = ids.iter().map(|id| jobs_of[id].clone()).collect();
    assert_eq!(jobs, names, "each id is a run of the job named at its place");
    assert!(commits <= JOBS as u64 / 2, "{commits} commits for {JOBS} job runs submitted together");
}
