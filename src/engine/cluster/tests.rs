//! Cluster nodes on one real PostgreSQL (`store::pg::testing`), each an engine in this process
//! with real processes: who runs what, and that the owner decides.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::ClusterConfig;
use crate::engine::seam_tests::config_on;
use crate::engine::{EngineConfig, EngineEvent, EngineHandle, EventData, SubmitRequest, Target};
use crate::model::{FailReason, JobState, TaskState};
use crate::store::pg::testing::TestDb;
use crate::store::pg::{PgBackend, PgOptions};
use crate::store::{Store, StoreHandle};

/// An engine config of node `name` on the test database.
pub(super) fn node_config(db: &TestDb, dir: &std::path::Path, text: &str, name: &str, workers: usize) -> EngineConfig {
    let workflow = crate::config::parse(&dir.join("w.toml"), text).expect("valid workflow");
    let options = PgOptions { queue_facts: super::queue_facts(&workflow), ..PgOptions::default() };
    let backend = Arc::new(PgBackend::open(&db.url, options).expect("open the pg store"));
    let mut config = config_on(dir, text, StoreHandle::new(backend.clone()));
    config.workers = workers;
    config.cluster = Some(ClusterConfig {
        lease: Duration::from_secs(6),
        node_name: name.to_string(),
        ..ClusterConfig::new(backend)
    });
    config
}

/// A node registers at start with its labels, owns the job runs it creates (epoch 1), and says
/// it stopped when it stops.
#[test]
fn a_node_registers_owns_what_it_creates_and_leaves() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let text = "[jobs.j.tasks.hello]\nrun = \"true\"\n";
    let mut config = node_config(&db, dir.path(), text, "node-a", 1);
    config.cluster.as_mut().expect("cluster").labels = vec!["gpu".into()];
    let backend = config.cluster.as_ref().expect("cluster").backend.clone();
    let system = actix::System::new();
    let id = system.block_on(async move {
        let handle = crate::engine::start(config);
        handle.resume_all().await.expect("resume");
        let node = db.psql("SELECT name, labels, stopped, lease_until > now() FROM nodes");
        assert_eq!(node.split_whitespace().collect::<Vec<_>>(), ["node-a|{gpu}|f|t"], "{node}");
        let submitted = handle.submit_request(SubmitRequest { job: "j".into(), ..Default::default() }).await;
        let id = submitted.expect("submit").job_run;
        let ended = handle.wait(vec![id]).await.expect("wait");
        assert_eq!(ended, [(id, JobState::Succeeded)]);
        assert_eq!(backend.store().ownership.owned(), Vec::<u64>::new(), "an ended run is forgotten");
        handle.shutdown().await;
        (id, db)
    });
    let (id, db) = id;
    let owner = db.psql(&format!(
        "SELECT n.name, j.owner_epoch FROM job_runs j JOIN nodes n ON n.id = j.owner_node WHERE j.id = {id}"
    ));
    assert_eq!(owner.trim(), "node-a|1", "{owner}");
    let node = db.psql("SELECT stopped, lease_until <= now() FROM nodes");
    assert_eq!(node.trim(), "t|t", "{node}");
}

/// Nodes started on one database, each with a state dir of its own: `(name, workers, labels)`.
struct Cluster {
    nodes: Vec<EngineHandle>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(db: &TestDb, text: &str, nodes: &[(&str, usize, &[&str])]) -> Cluster {
        let mut handles = Vec::new();
        let mut dirs = Vec::new();
        for &(name, workers, labels) in nodes {
            let dir = crate::state_dir::private_tempdir();
            let mut config = node_config(db, dir.path(), text, name, workers);
            let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
            config.labels = labels.clone();
            config.cluster.as_mut().expect("cluster").labels = labels;
            let handle = crate::engine::start(config);
            handle.resume_all().await.expect("resume");
            handles.push(handle);
            dirs.push(dir);
        }
        Cluster { nodes: handles, dirs }
    }

    async fn stop(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }
}

/// Starts `nodes`, submits one run of job `j` to the first, which must end `expect`; then stops
/// them all. The job run's id, and the events each node published meanwhile.
fn run_on_first(
    db: &TestDb,
    text: &str,
    nodes: &[(&str, usize, &[&str])],
    expect: JobState,
) -> (u64, Vec<Vec<EngineEvent>>) {
    let system = actix::System::new();
    system.block_on(async {
        let cluster = Cluster::start(db, text, nodes).await;
        let mut subscribed = Vec::new();
        for node in &cluster.nodes {
            subscribed.push(node.subscribe().await.expect("subscribe"));
        }
        let a = &cluster.nodes[0];
        let id = submit_j(a).await;
        until_ended(a, id, expect).await;
        a.flush_events().await;
        let events = subscribed.iter_mut().map(drain).collect();
        cluster.stop().await;
        (id, events)
    })
}

/// Submits one run of job `j` to `node`: its id.
async fn submit_j(node: &EngineHandle) -> u64 {
    node.submit_request(SubmitRequest { job: "j".into(), ..Default::default() }).await.expect("submit").job_run
}

/// Waits (60 s at most) for job run `id` to end `expect`.
async fn until_ended(node: &EngineHandle, id: u64, expect: JobState) {
    let ended = tokio::time::timeout(Duration::from_secs(60), node.wait(vec![id])).await;
    assert_eq!(ended.expect("the job run did not end within a minute").expect("wait"), [(id, expect)]);
}

/// The task runs of job run `id` and their attempts, read back through the store.
fn records(db: &TestDb, id: u64) -> Vec<(crate::store::TaskRunRecord, Vec<crate::store::AttemptRecord>)> {
    let backend = PgBackend::open(&db.url, PgOptions::default()).expect("open");
    let snapshot = backend.snapshot().expect("snapshot");
    let tasks = snapshot.task_runs_of(id).expect("read");
    tasks.into_iter().map(|t| (t.clone(), snapshot.attempts_of(t.id).expect("read"))).collect()
}

/// Waits (20 s at most) until a `task.started` comes.
async fn until_started(events: &mut UnboundedReceiver<EngineEvent>) {
    loop {
        let e =
            tokio::time::timeout(Duration::from_secs(20), events.recv()).await.expect("task.started").expect("open");
        if matches!(e.data, EventData::TaskStarted { .. }) {
            return;
        }
    }
}

/// Everything published so far.
fn drain(events: &mut UnboundedReceiver<EngineEvent>) -> Vec<EngineEvent> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push(e);
    }
    out
}

fn node_id(db: &TestDb, name: &str) -> String {
    db.psql(&format!("SELECT id FROM nodes WHERE name = '{name}'")).trim().to_string()
}

/// Lines of a file the tasks append to.
fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Twelve independent tasks submitted to node a: nodes b and c claim some of them (each task
/// says where it ran), and node a, the owner, decides everything — every task run's end and
/// the job run's are a's events, none are b's or c's, and the records say so.
#[test]
fn a_job_run_submitted_to_one_node_runs_on_several_and_its_owner_decides() {
    let Some(db) = TestDb::get() else { return };
    let out = crate::state_dir::private_tempdir();
    let ran = out.path().join("ran");
    let mut text = String::new();
    for n in 0..12 {
        text.push_str(&format!(
            "[jobs.j.tasks.t{n}]\nrun = \"echo \\\"$GAFFER_STATE_DIR\\\" >> '{}'; sleep 0.2\"\n",
            ran.display()
        ));
    }
    let (id, events) = run_on_first(&db, &text, &[("a", 2, &[]), ("b", 2, &[]), ("c", 2, &[])], JobState::Succeeded);
    let (a_events, others) = (&events[0], events[1..].concat());
    let where_ran: BTreeSet<String> = lines(&ran).into_iter().collect();
    assert_eq!(lines(&ran).len(), 12, "each task ran once: {where_ran:?}");
    assert!(where_ran.len() >= 2, "all twelve ran on one node: {where_ran:?}");

    let succeeded = a_events.iter().filter(|e| matches!(e.data, EventData::TaskSucceeded { .. })).count();
    assert_eq!(succeeded, 12, "the owner said every task's end");
    assert!(a_events.iter().any(|e| matches!(e.data, EventData::JobSucceeded(_))));
    // b's and c's subscribers see the run's events (the cluster's stream), but only a's.
    let key = |e: &EngineEvent| (e.data.name().as_str(), e.task_run, e.attempt, e.ts_ms);
    let by_a: BTreeSet<_> = a_events.iter().filter(|e| e.job_run == Some(id)).map(key).collect();
    let decided_elsewhere: Vec<_> =
        others.iter().filter(|e| e.job_run == Some(id) && !by_a.contains(&key(e))).map(key).collect();
    assert!(decided_elsewhere.is_empty(), "other nodes published {decided_elsewhere:?}");

    let a_id = node_id(&db, "a");
    let owner = db.psql(&format!("SELECT owner_node, owner_epoch, state FROM job_runs WHERE id = {id}"));
    assert_eq!(owner.trim(), format!("{a_id}|1|succeeded"));
    let rows = db.psql(&format!(
        "SELECT count(*) FILTER (WHERE state = 'succeeded' AND attempt = 1), count(*) FROM task_runs WHERE job_run = {id}"
    ));
    assert_eq!(rows.trim(), "12|12", "{rows}");
    let remote = db.psql(&format!("SELECT count(*) FROM attempts WHERE node IS NOT NULL AND node <> {a_id}"));
    let remote: usize = remote.trim().parse().expect("count");
    assert!(remote >= 1, "no attempt row says another node ran it");
    // The records the owner wrote read back as it saw them.
    for (t, attempts) in records(&db, id) {
        assert_eq!((t.state, t.attempt), (TaskState::Succeeded, 1), "{t:?}");
        assert_eq!(
            attempts.iter().map(|a| (a.n, a.exit_code, a.ended_at_ms.is_some())).collect::<Vec<_>>(),
            [(1, Some(0), true)]
        );
    }
    assert_eq!(db.psql("SELECT count(*) FROM node_mail").trim(), "0", "every letter was read");
}

/// A task only node b can run (`requires`) fails there once: its owner a hears of it by mail,
/// decides the retry by the task's policy, and b runs the second attempt.
#[test]
fn a_retry_of_an_attempt_that_failed_on_another_node_is_decided_by_its_owner() {
    let Some(db) = TestDb::get() else { return };
    let out = crate::state_dir::private_tempdir();
    let marker = out.path().join("failed-once");
    let text = format!(
        r#"
[jobs.j.tasks.flaky]
requires = ["remote"]
run = "test -e '{marker}' || {{ touch '{marker}'; exit 3; }}"
retry = {{ max_attempts = 2, initial_interval = "50ms", backoff = 1.0, jitter = 0.0 }}
"#,
        marker = marker.display()
    );
    let (id, events) = run_on_first(&db, &text, &[("a", 1, &[]), ("b", 1, &["remote"])], JobState::Succeeded);
    let (a_events, b_events) = (&events[0], &events[1]);
    let names: Vec<&str> = a_events.iter().filter(|e| e.job_run == Some(id)).map(|e| e.data.name().as_str()).collect();
    for expected in ["task.started", "task.failed", "task.retry_scheduled", "task.succeeded", "job.succeeded"] {
        assert!(names.contains(&expected), "the owner did not say {expected}: {names:?}");
    }
    // b's subscribers may see the run's events (the cluster's stream, echoed every 250 ms),
    // but only a's: b decided nothing.
    let key = |e: &EngineEvent| (e.data.name().as_str(), e.task_run, e.attempt, e.ts_ms);
    let by_a: BTreeSet<_> = a_events.iter().filter(|e| e.job_run == Some(id)).map(key).collect();
    let by_b: Vec<_> = b_events.iter().filter(|e| e.job_run == Some(id) && !by_a.contains(&key(e))).collect();
    assert!(by_b.is_empty(), "b decided something: {by_b:?}");
    // b has the label `remote`: the owner, lacking it, does not call the task run blocked.
    assert!(!a_events.iter().any(|e| matches!(e.data, EventData::TaskBlocked { .. })), "{a_events:?}");
    let b_id = node_id(&db, "b");
    let attempts = db.psql(&format!(
        "SELECT a.n, a.node FROM attempts a JOIN task_runs t ON t.id = a.task_run WHERE t.job_run = {id} ORDER BY a.n"
    ));
    assert_eq!(attempts.split_whitespace().collect::<Vec<_>>(), [format!("1|{b_id}"), format!("2|{b_id}")]);
    let (task, attempts) = records(&db, id).pop().expect("the task run");
    assert_eq!((task.state, task.attempt), (TaskState::Succeeded, 2));
    assert_eq!(
        attempts.iter().map(|a| (a.n, a.exit_code, a.reason)).collect::<Vec<_>>(),
        [(1, Some(3), Some(FailReason::ExitCode)), (2, Some(0), None)]
    );
}

/// A declared queue's `concurrency = 2` holds across three nodes (seven workers): the tasks
/// themselves write when they start and end, and no three ever overlap.
#[test]
fn a_declared_queue_cap_holds_across_nodes() {
    let Some(db) = TestDb::get() else { return };
    let out = crate::state_dir::private_tempdir();
    let times = out.path().join("times");
    let mut text = String::from("[queues.capped]\nconcurrency = 2\n");
    for n in 0..10 {
        text.push_str(&format!(
            "[jobs.j.tasks.t{n}]\nqueue = \"capped\"\nrun = \"s=$(date +%s%N); sleep 0.3; echo $s $(date +%s%N) \\\"$GAFFER_STATE_DIR\\\" >> '{}'\"\n",
            times.display()
        ));
    }
    // One worker per node: the two slots at once are always two nodes' (with more workers, one
    // node could take both slots every time, as it did once the writer got faster), and three
    // workers in all could pass the cap if it held per node only.
    run_on_first(&db, &text, &[("a", 1, &[]), ("b", 1, &[]), ("c", 1, &[])], JobState::Succeeded);
    let runs: Vec<(u128, u128, String)> = lines(&times)
        .iter()
        .map(|l| {
            let mut f = l.split_whitespace();
            let n = |f: &mut std::str::SplitWhitespace| f.next().expect("field").parse::<u128>().expect("ns");
            (n(&mut f), n(&mut f), f.next().expect("dir").to_string())
        })
        .collect();
    assert_eq!(runs.len(), 10);
    let most = runs.iter().map(|(start, _, _)| runs.iter().filter(|(s, e, _)| s <= start && start < e).count()).max();
    assert_eq!(most, Some(2), "at most 2 at once, and 2 were used: {runs:?}");
    let nodes: BTreeSet<&str> = runs.iter().map(|(_, _, dir)| dir.as_str()).collect();
    assert!(nodes.len() >= 2, "the capped queue ran on one node only: {nodes:?}");
}

/// Cancelling a job run on its owner kills its attempt running on another node (a `Kill`
/// letter), and the owner records it cancelled.
#[test]
fn cancelling_a_job_run_kills_its_attempt_on_another_node() {
    let Some(db) = TestDb::get() else { return };
    let out = crate::state_dir::private_tempdir();
    let pid_file = out.path().join("pid");
    let text = format!(
        "[jobs.j.tasks.long]\nrequires = [\"remote\"]\nrun = \"echo $$ > '{}'; exec sleep 30\"\n",
        pid_file.display()
    );
    let system = actix::System::new();
    let started = std::time::Instant::now();
    let id = system.block_on(async {
        let cluster = Cluster::start(&db, &text, &[("a", 1, &[]), ("b", 1, &["remote"])]).await;
        let a = &cluster.nodes[0];
        let mut events = a.subscribe().await.expect("subscribe");
        let id = submit_j(a).await;
        // The owner knows it started over there.
        until_started(&mut events).await;
        a.cancel(Target::JobRun(id)).await.expect("cancel");
        assert_eq!(a.wait(vec![id]).await.expect("wait"), [(id, JobState::Cancelled)]);
        cluster.stop().await;
        id
    });
    assert!(started.elapsed() < Duration::from_secs(20), "the attempt ran to its end: {:?}", started.elapsed());
    let pid: i32 = std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("pid");
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(), "process {pid} still runs");
    let (task, attempts) = records(&db, id).pop().expect("the task run");
    assert_eq!(task.state, TaskState::Cancelled);
    assert_eq!(attempts.iter().map(|a| a.reason).collect::<Vec<_>>(), [Some(FailReason::Cancelled)]);
    let b_id = node_id(&db, "b");
    let ran_on = db.psql(&format!("SELECT node FROM attempts WHERE task_run = {}", task.id));
    assert_eq!(ran_on.trim(), b_id);
}

/// An attempt that cannot even start on the node that claimed it (no such program) still
/// reaches its owner, which records the spawn error and decides (retries, then the job run
/// fails).
#[test]
fn an_attempt_that_cannot_start_on_another_node_is_recorded_by_its_owner() {
    let Some(db) = TestDb::get() else { return };
    let text = "[jobs.j.tasks.missing]\nrequires = [\"remote\"]\nargs = [\"/nonexistent/gaffer-test-program\"]\n";
    let (id, _) = run_on_first(&db, text, &[("a", 1, &[]), ("b", 1, &["remote"])], JobState::Failed);
    let (task, attempts) = records(&db, id).pop().expect("the task run");
    assert_eq!(task.state, TaskState::Dead);
    // Retried by the default policy, each time decided by the owner.
    let reasons: Vec<_> = attempts.iter().map(|a| (a.n, a.reason)).collect();
    assert_eq!(reasons, (1..=task.attempt).map(|n| (n, Some(FailReason::SpawnError))).collect::<Vec<_>>());
    assert!(task.attempt >= 1);
}

/// Spending reported on another node reaches the owner (`Cost` letters): past the job run's
/// budget the owner stops the attempt over there (`Kill`), and records what it cost.
#[test]
fn a_budget_crossed_on_another_node_stops_the_attempt_there() {
    let Some(db) = TestDb::get() else { return };
    let text = "[jobs.j]\nbudget_usd = 0.05\n[jobs.j.tasks.spender]\nrequires = [\"remote\"]\n\
                run = \"echo 'cost usd=0.04' >&3; sleep 0.3; echo 'cost usd=0.04' >&3; exec sleep 30\"\n";
    let started = std::time::Instant::now();
    let (id, events) = run_on_first(&db, text, &[("a", 1, &[]), ("b", 1, &["remote"])], JobState::Failed);
    assert!(started.elapsed() < Duration::from_secs(20), "the attempt ran to its end: {:?}", started.elapsed());
    assert!(events[0].iter().any(|e| matches!(e.data, EventData::BudgetExceeded { .. })), "the owner said so");
    let (task, attempts) = records(&db, id).pop().expect("the task run");
    assert_eq!(task.state, TaskState::Dead);
    let spent: Vec<_> = attempts.iter().map(|a| (a.reason, a.cost_usd_micros)).collect();
    assert_eq!(spent, [(Some(FailReason::Budget), 80_000)]);
}

/// What an attempt on another node reports reaches its owner by mail: progress and warnings as
/// events and on the attempt's record, outputs (the next task's template sees them), and an
/// `expect` the owner checks.
#[test]
fn progress_warnings_and_outputs_of_a_remote_attempt_reach_its_owner() {
    let Some(db) = TestDb::get() else { return };
    let text = "[jobs.j.tasks.remote]\nrequires = [\"remote\"]\n\
                run = \"echo 'progress half way' >&3; echo 'nonsense line' >&3; echo 'output answer=42' >&3\"\n\
                [jobs.j.tasks.local]\nneeds = [\"remote\"]\nargs = [\"test\", \"{{ tasks.remote.outputs.answer }}\", \"=\", \"42\"]\n";
    let (id, events) = run_on_first(&db, text, &[("a", 1, &[]), ("b", 1, &["remote"])], JobState::Succeeded);
    let said = |f: &dyn Fn(&EventData) -> bool| events[0].iter().any(|e| e.job_run == Some(id) && f(&e.data));
    assert!(said(&|d| matches!(d, EventData::TaskProgress { message } if message == "half way")), "{:?}", events[0]);
    assert!(said(&|d| matches!(d, EventData::TaskWarning { .. })), "{:?}", events[0]);
    let remote = records(&db, id).into_iter().find(|(t, _)| t.task == "remote").expect("the remote task run");
    assert_eq!(remote.0.outputs.get("answer").map(String::as_str), Some("42"));
    assert_eq!(remote.1.len(), 1);
    assert!(!remote.1[0].warnings.is_empty(), "the warning is on the owner's record of the attempt");
}

/// A task run no node takes within its `queue_timeout` is timed out by its owner, as a single
/// node's Dispatcher would.
#[test]
fn a_task_run_nobody_claims_times_out_on_its_owner() {
    let Some(db) = TestDb::get() else { return };
    let text = "[jobs.j.tasks.gpu]\nrequires = [\"gpu\"]\nqueue_timeout = \"300ms\"\nrun = \"true\"\n";
    let started = std::time::Instant::now();
    let (id, events) = run_on_first(&db, text, &[("a", 1, &[]), ("b", 1, &[])], JobState::Failed);
    assert!(started.elapsed() < Duration::from_secs(20));
    let (task, attempts) = records(&db, id).pop().expect("the task run");
    assert_eq!((task.state, task.reason, attempts.len()), (TaskState::Dead, Some(FailReason::QueueTimeout), 0));
    // No live node has `gpu`: its owner said so once, as one node does (`task.blocked`).
    let blocked: Vec<&EngineEvent> =
        events[0].iter().filter(|e| matches!(e.data, EventData::TaskBlocked { .. })).collect();
    assert_eq!(blocked.len(), 1, "{:?}", events[0]);
    assert_eq!((blocked[0].job_run, blocked[0].task_run), (Some(id), Some(task.id)));
    let EventData::TaskBlocked { requires, node_labels } = &blocked[0].data else { unreachable!() };
    assert_eq!((requires.as_slice(), node_labels.as_slice()), (&["gpu".to_string()][..], &[][..]));
}

/// Start times the tasks wrote (ns), with the state dir of the node each ran on.
fn starts(path: &std::path::Path) -> Vec<(u128, String)> {
    lines(path)
        .iter()
        .map(|l| {
            let (ns, dir) = l.split_once(' ').expect("two fields");
            (ns.parse().expect("ns"), dir.to_string())
        })
        .collect()
}

/// A queue's `rate_limit = "2/2s"` holds across two nodes: their starts together never put
/// three in one window (less 0.5 s for the spawn's own delay). Half the tasks only node a can
/// run, half only b (`requires`), so both nodes start from the queue at once.
#[test]
fn a_queues_rate_limit_holds_across_nodes() {
    let Some(db) = TestDb::get() else { return };
    let out = crate::state_dir::private_tempdir();
    let times = out.path().join("times");
    let mut text = String::from("[queues.limited]\nrate_limit = \"2/2s\"\n");
    for n in 0..6 {
        text.push_str(&format!(
            "[jobs.j.tasks.t{n}]\nqueue = \"limited\"\nrequires = [\"{}\"]\nrun = \"echo $(date +%s%N) \\\"$GAFFER_STATE_DIR\\\" >> '{}'\"\n",
            if n % 2 == 0 { "a" } else { "b" },
            times.display()
        ));
    }
    run_on_first(&db, &text, &[("a", 3, &["a"]), ("b", 3, &["b"])], JobState::Succeeded);
    let starts = starts(&times);
    assert_eq!(starts.len(), 6);
    let window_ns = 1_500_000_000;
    let most = starts.iter().map(|(t, _)| starts.iter().filter(|(s, _)| s >= t && s - t < window_ns).count()).max();
    assert!(most <= Some(2), "more than 2 starts within 1.5 s: {starts:?}");
    let nodes: BTreeSet<&str> = starts.iter().map(|(_, dir)| dir.as_str()).collect();
    assert_eq!(nodes.len(), 2, "{starts:?}");
}

/// A run of a job submitted to node a runs 2 s; node b serves the job's schedule (every
/// second, `overlap = "skip"`, the default) and counts none of its own: its fire times while
/// a's run is active are skipped (said by b), and runs never overlap.
#[test]
fn overlap_holds_across_nodes() {
    let Some(db) = TestDb::get() else { return };
    let out = crate::state_dir::private_tempdir();
    let times = out.path().join("times");
    let text = format!(
        "[jobs.c]\nschedule = \"* * * * * *\"\n[jobs.c.tasks.t]\nrun = \"s=$(date +%s%N); sleep 2; echo $s $(date +%s%N) >> '{}'\"\n",
        times.display()
    );
    let system = actix::System::new();
    let b_events = system.block_on(async {
        let cluster = Cluster::start(&db, &text, &[("a", 1, &[]), ("b", 1, &[])]).await;
        let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
        let mut b_events = b.subscribe().await.expect("subscribe");
        a.submit_request(SubmitRequest { job: "c".into(), ..Default::default() }).await.expect("submit");
        b.serve_schedules().await.expect("serve schedules");
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        cluster.stop().await;
        drain(&mut b_events)
    });
    let runs: Vec<(u128, u128)> = lines(&times)
        .iter()
        .map(|l| {
            let (s, e) = l.split_once(' ').expect("two fields");
            (s.parse().expect("ns"), e.parse().expect("ns"))
        })
        .collect();
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            assert!(a.1 <= b.0 || b.1 <= a.0, "two runs at once: {a:?} {b:?} of {runs:?}");
        }
    }
    let skipped = b_events.iter().filter(|e| matches!(&e.data, EventData::ScheduleSkipped { .. })).count();
    assert!(skipped >= 1, "b skipped no fire time: {:?}", b_events.iter().map(|e| e.data.name()).collect::<Vec<_>>());
}

/// A cancel given on a node that does not own the job run (the CLI, the API, a TUI keypress on
/// any node) goes to its owner by mail and comes back with its answer: the owner cancels, and
/// the other node never starts an actor for the run (it would resume it, killing its attempts,
/// and be fenced: a cancel that said it was done and was not).
#[test]
fn a_cancel_given_on_another_node_is_carried_out_by_the_owner() {
    let Some(db) = TestDb::get() else { return };
    let text = "[jobs.j.tasks.long]\nrun = \"exec sleep 30\"\n";
    let system = actix::System::new();
    let started = std::time::Instant::now();
    let (id, answer) = system.block_on(async {
        let cluster = Cluster::start(&db, text, &[("a", 1, &[]), ("b", 1, &[])]).await;
        let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
        let mut events = a.subscribe().await.expect("subscribe");
        let id = submit_j(a).await;
        until_started(&mut events).await;
        let answer = b.cancel(Target::JobRun(id)).await.expect("the owner's answer");
        assert_eq!(a.wait(vec![id]).await.expect("wait"), [(id, JobState::Cancelled)]);
        cluster.stop().await;
        (id, answer)
    });
    assert!(answer.contains("cancel"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(20), "the attempt ran to its end: {:?}", started.elapsed());
    let owner = db.psql(&format!(
        "SELECT n.name, j.owner_epoch FROM job_runs j JOIN nodes n ON n.id = j.owner_node WHERE j.id = {id}"
    ));
    assert_eq!(owner.trim(), "a|1", "still a's, never taken: {owner}");
    let (_, attempts) = &records(&db, id)[0];
    assert_eq!(attempts.len(), 1, "one attempt, cancelled, not interrupted and retried: {attempts:?}");
    assert_eq!(attempts[0].reason, Some(FailReason::Cancelled), "{attempts:?}");
}

/// A retry of an ended job run given on another node: nobody decides for an ended run, so that
/// node takes it over (a new epoch) and runs the retry as its owner.
#[test]
fn a_retry_of_an_ended_job_run_on_another_node_takes_it_over() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let flag = dir.path().join("ok");
    let text = format!("[jobs.j.tasks.t]\nrun = \"test -e '{}'\"\n", flag.display());
    let system = actix::System::new();
    let id = system.block_on(async {
        let cluster = Cluster::start(&db, &text, &[("a", 1, &[]), ("b", 1, &[])]).await;
        let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
        let id = submit_j(a).await;
        assert_eq!(a.wait(vec![id]).await.expect("wait"), [(id, JobState::Failed)]);
        std::fs::write(&flag, "").expect("flag");
        // Each node here has its workflow file in a dir of its own (a task's cwd): as stored.
        let stored = crate::engine::inbox::RetryOptions {
            definition: Some(crate::model::rerun::DefinitionChoice::Stored),
            ..Default::default()
        };
        b.retry_with(Target::JobRun(id), stored).await.expect("the retry");
        let ended = tokio::time::timeout(Duration::from_secs(30), b.wait(vec![id])).await.expect("ended in time");
        assert_eq!(ended.expect("wait"), [(id, JobState::Succeeded)]);
        cluster.stop().await;
        id
    });
    let owner = db.psql(&format!(
        "SELECT n.name, j.owner_epoch FROM job_runs j JOIN nodes n ON n.id = j.owner_node WHERE j.id = {id}"
    ));
    assert_eq!(owner.trim(), "b|2", "{owner}");
}

/// Issue #11 §6: the event stream of every node (its TUI, `--json`, SSE) carries the whole
/// cluster's events: b's subscribers see the job run a owns, each of a's events once.
#[test]
fn a_nodes_subscribers_see_the_events_of_job_runs_another_node_owns() {
    let Some(db) = TestDb::get() else { return };
    let text = "[jobs.j.tasks.hello]\nrun = \"true\"\n";
    let system = actix::System::new();
    system.block_on(async {
        let cluster = Cluster::start(&db, text, &[("a", 1, &[]), ("b", 1, &[])]).await;
        let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
        let mut on_a = a.subscribe().await.expect("subscribe");
        let mut on_b = b.subscribe().await.expect("subscribe");
        let id = submit_j(a).await;
        assert_eq!(a.wait(vec![id]).await.expect("wait"), [(id, JobState::Succeeded)]);
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !seen.iter().any(|e: &EngineEvent| matches!(e.data, EventData::JobSucceeded(_))) {
            let e = tokio::time::timeout_at(deadline, on_b.recv()).await.expect("a's events reach b").expect("open");
            if e.job_run == Some(id) {
                seen.push(e);
            }
        }
        a.flush_events().await;
        // Long enough for a's follower to have read its own events back: not handed to a again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let on_a: Vec<EngineEvent> = drain(&mut on_a).into_iter().filter(|e| e.job_run == Some(id)).collect();
        let names = |events: &[EngineEvent]| events.iter().map(|e| e.data.name()).collect::<Vec<_>>();
        assert_eq!(on_a.iter().filter(|e| matches!(e.data, EventData::JobSucceeded(_))).count(), 1, "{on_a:?}");
        seen.extend(drain(&mut on_b).into_iter().filter(|e| e.job_run == Some(id)));
        assert_eq!(names(&seen), names(&on_a), "each of a's events once, in a's order");
        cluster.stop().await;
    });
}

/// Every attempt row names the node that ran it (`attempts.node`), the owner's own attempts
/// too (they were NULL): each task writes its task run, attempt and state dir, and the rows say
/// the same node, for a first attempt and a retry, on the owner and on the others.
#[test]
fn every_attempt_row_names_the_node_that_ran_it() {
    let Some(db) = TestDb::get() else { return };
    let out = crate::state_dir::private_tempdir();
    let (ran, marker) = (out.path().join("ran"), out.path().join("failed-once"));
    let report = format!("echo $GAFFER_TASK_RUN_ID $GAFFER_ATTEMPT \\\"$GAFFER_STATE_DIR\\\" >> '{}'", ran.display());
    let mut text = format!(
        "[jobs.j.tasks.flaky]\nrun = \"{report}; test -e '{m}' || {{ touch '{m}'; exit 3; }}\"\n\
         retry = {{ max_attempts = 2, initial_interval = \"50ms\", backoff = 1.0, jitter = 0.0 }}\n",
        m = marker.display()
    );
    for n in 0..9 {
        text.push_str(&format!("[jobs.j.tasks.t{n}]\nrun = \"{report}; sleep 0.2\"\n"));
    }
    let system = actix::System::new();
    let (id, dirs) = system.block_on(async {
        let cluster = Cluster::start(&db, &text, &[("a", 2, &[]), ("b", 2, &[]), ("c", 2, &[])]).await;
        let a = &cluster.nodes[0];
        let id = submit_j(a).await;
        let ended = tokio::time::timeout(Duration::from_secs(60), a.wait(vec![id])).await.expect("ended in 60 s");
        assert_eq!(ended.expect("wait"), [(id, JobState::Succeeded)]);
        let dirs: Vec<(String, std::path::PathBuf)> =
            ["a", "b", "c"].iter().zip(&cluster.dirs).map(|(n, d)| (n.to_string(), d.path().to_path_buf())).collect();
        cluster.stop().await;
        (id, dirs)
    });
    let node_of_dir = |dir: &str| {
        let found = dirs.iter().find(|(_, d)| d.to_str() == Some(dir));
        found.map(|(name, _)| name.clone()).unwrap_or_else(|| panic!("no node has state dir {dir}"))
    };
    let mut expected: Vec<String> = lines(&ran)
        .iter()
        .map(|l| {
            let mut words = l.splitn(3, ' ');
            let (task_run, n, dir) = (words.next(), words.next(), words.next());
            format!("{}|{}|{}", task_run.expect("id"), n.expect("attempt"), node_of_dir(dir.expect("dir")))
        })
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 11, "ten tasks, one retried: {expected:?}");
    let rows = db.psql(&format!(
        "SELECT a.task_run || '|' || a.n || '|' || coalesce(n.name, 'NULL') FROM attempts a \
         JOIN task_runs t ON t.id = a.task_run LEFT JOIN nodes n ON n.id = a.node \
         WHERE t.job_run = {id} ORDER BY 1"
    ));
    let mut rows: Vec<String> = rows.split_whitespace().map(str::to_string).collect();
    rows.sort();
    assert_eq!(rows, expected, "attempt rows (task run|n|node) against where each attempt ran");
    assert!(rows.iter().any(|r| r.ends_with("|a")), "the owner ran none itself: {rows:?}");
}

/// A node whose claims only a notification wakes (no poll within the test): what it knows of
/// its queues changes only through what the test does.
fn unpolled(mut config: EngineConfig) -> EngineConfig {
    config.cluster.as_mut().expect("cluster").claim_poll = Duration::from_secs(3600);
    config
}

/// Submits one run of job `j` to `node` and waits (60 s at most) for it to succeed.
async fn submit_and_succeed(node: &EngineHandle) -> u64 {
    let id = submit_j(node).await;
    until_ended(node, id, JobState::Succeeded).await;
    id
}

/// The notifications of `queue` heard on `waker` within `within` (those of other queues — other
/// tests share the database — are not counted).
async fn notified(waker: &mut crate::store::pg::queue::Waker, queue: &str, within: Duration) -> usize {
    let until = tokio::time::Instant::now() + within;
    let mut heard = 0;
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        if let crate::store::pg::queue::Woken::Queues(queues) = waker.wait(left).await {
            heard += usize::from(queues.contains(queue));
        }
    }
    heard
}

/// A task submitted to a node with an idle worker, whose last claim found the task's queue
/// empty, starts with the submit's commit — no queued row, no `NOTIFY`, no claim — and its
/// records are those of any attempt run on that node (`model::start_at_submit` says where it
/// may; its table tests say where not).
#[test]
fn an_idle_node_starts_a_submitted_task_with_the_submits_commit() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let text = "[queues.at_submit_a]\n[jobs.j.tasks.t]\nqueue = \"at_submit_a\"\nrun = \"true\"\n";
    let config = unpolled(node_config(&db, dir.path(), text, "a", 2));
    let system = actix::System::new();
    let db = system.block_on(async move {
        let node = crate::engine::start(config);
        node.resume_all().await.expect("resume");
        let mut waker = crate::store::pg::queue::Waker::listen(&db.url).await.expect("listen");
        submit_and_succeed(&node).await;
        // Before each submit, a wake-up of the queue makes the node claim it and find it empty
        // (the poll would, within 250 ms, but it is off here): the submit before may have gone
        // through the queue, whose claim says nothing while its commit is not known to have
        // landed. Other tests on this database wake the node too (their NOTIFYs), and a submit
        // that meets the claim such a wake-up started is queued, rightly; so of four submits
        // most, not all, start at submit — and none would without it.
        let (mut ids, mut queued) = (Vec::new(), 0);
        for _ in 0..4 {
            db.psql("SELECT pg_notify('gaffer_queue', 'at_submit_a')");
            tokio::time::sleep(Duration::from_millis(500)).await;
            notified(&mut waker, "at_submit_a", Duration::from_millis(50)).await;
            ids.push(submit_and_succeed(&node).await);
            queued += notified(&mut waker, "at_submit_a", Duration::from_millis(100)).await.min(1);
        }
        assert!(queued <= 1, "{queued} of 4 submits were queued");
        for id in ids {
            let records = records(&db, id);
            assert_eq!(records.len(), 1);
            let (task, attempts) = &records[0];
            assert_eq!((task.state, task.attempt, attempts.len()), (TaskState::Succeeded, 1, 1), "{records:?}");
        }
        let ran_on_a =
            db.psql("SELECT count(*) FROM attempts t JOIN nodes n ON n.id = t.node WHERE n.name = 'a' AND t.n = 1");
        assert_eq!(ran_on_a.trim(), "5", "every attempt names node a");
        node.shutdown().await;
        db
    });
    drop(db);
}

/// A queue paused on another node is not started in at submit by a node that knew it empty:
/// the pause wakes every node (its `NOTIFY`), whose claim then sees it paused; the task waits
/// queued until the queue is resumed.
#[test]
fn a_queue_paused_on_another_node_is_not_started_in_at_submit() {
    let Some(db) = TestDb::get() else { return };
    let text = "[queues.at_submit_p]\n[jobs.j.tasks.t]\nqueue = \"at_submit_p\"\nrun = \"true\"\n";
    let (dir_a, dir_b) = (crate::state_dir::private_tempdir(), crate::state_dir::private_tempdir());
    let a = unpolled(node_config(&db, dir_a.path(), text, "a", 2));
    let b = unpolled(node_config(&db, dir_b.path(), text, "b", 1));
    let system = actix::System::new();
    let db = system.block_on(async move {
        let (a, b) = (crate::engine::start(a), crate::engine::start(b));
        a.resume_all().await.expect("resume a");
        b.resume_all().await.expect("resume b");
        submit_and_succeed(&a).await;
        assert!(b.set_paused("at_submit_p", true).await.expect("pause on b"));
        // The pause's notification reaches a, whose claim reads the pause.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut events = a.subscribe().await.expect("subscribe");
        let id = submit_j(&a).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = drain(&mut events).iter().any(|e| matches!(e.data, EventData::TaskStarted { .. }));
        assert!(!started, "a task started in a paused queue");
        let state = db.psql(&format!("SELECT state FROM task_runs WHERE job_run = {id}"));
        assert_eq!(state.trim(), "queued");
        assert!(b.set_paused("at_submit_p", false).await.expect("resume on b"));
        until_ended(&a, id, JobState::Succeeded).await;
        a.shutdown().await;
        b.shutdown().await;
        db
    });
    drop(db);
}

/// Many job runs submitted in a row to one node: starts at submit and claims share its workers,
/// and every task runs (a claim answered after a submit took its workers once left rows
/// `running` with no worker to run them, and the job runs never ended).
#[test]
fn job_runs_submitted_in_a_row_share_the_workers_between_submits_and_claims() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let mut text = String::new();
    for t in 0..50 {
        text.push_str(&format!("[jobs.j.tasks.t{t}]\nrun = \"true\"\n"));
    }
    let mut config = node_config(&db, dir.path(), &text, "a", 16);
    config.executor = Arc::new(crate::executor::NoopExecutor);
    let system = actix::System::new();
    let db = system.block_on(async move {
        let node = crate::engine::start(config);
        node.resume_all().await.expect("resume");
        for _round in 0..3 {
            // One after the other, as `gaffer run` submits its jobs: each submit lands while
            // the earlier runs' tasks end and are claimed.
            let mut ids = Vec::new();
            for _ in 0..20 {
                ids.push(submit_j(&node).await);
            }
            let ended = tokio::time::timeout(Duration::from_secs(60), node.wait(ids.clone())).await;
            let ended = ended.expect("every job run ends within a minute").expect("wait");
            assert!(ended.iter().all(|(_, s)| *s == JobState::Succeeded), "{ended:?}");
        }
        node.shutdown().await;
        db
    });
    drop(db);
}
