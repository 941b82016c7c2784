//! Adoption and a lost lease with engines in this process on one real PostgreSQL
//! (`store::pg::testing`) and real processes: a node's job run goes on elsewhere when it dies,
//! and a node whose lease ran out drops its work and joins again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::cluster::ClusterConfig;
use crate::engine::seam_tests::config_on;
use crate::engine::{EngineConfig, SubmitRequest};
use crate::model::{FailReason, JobState, TaskState};
use crate::store::pg::queue;
use crate::store::pg::testing::TestDb;
use crate::store::pg::{PgBackend, PgOptions};
use crate::store::{Store, StoreHandle};

/// The first attempt leaves a marker (its pid) and sleeps long; a retry finds the marker and
/// succeeds.
fn workflow(marker: &std::path::Path) -> String {
    format!(
        r#"
[jobs.j.tasks.long]
run = "test -e '{m}' && exit 0; echo $$ > '{m}'; exec sleep 60"
retry = {{ max_attempts = 3, initial_interval = "50ms", backoff = 1.0, jitter = 0.0 }}
"#,
        m = marker.display()
    )
}

/// Node `name` with the shortest lease (3 s: adoption is looked at every second).
fn node_config(db: &TestDb, dir: &std::path::Path, text: &str, name: &str) -> (EngineConfig, Arc<PgBackend>) {
    let backend = Arc::new(PgBackend::open(&db.url, PgOptions::default()).expect("open the pg store"));
    let mut config = config_on(dir, text, StoreHandle::new(backend.clone()));
    config.cluster = Some(ClusterConfig {
        lease: Duration::from_millis(crate::model::lease::MIN_LEASE_MS),
        node_name: name.to_string(),
        ..ClusterConfig::new(backend.clone())
    });
    (config, backend)
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An attempt's `(reason, pid)`.
type Tried = (Option<FailReason>, Option<u32>);

/// `(state, attempt)` of the job run's one task run, and its attempts.
fn task_of(backend: &PgBackend, job_run: u64) -> (TaskState, u32, Vec<Tried>) {
    let snapshot = backend.snapshot().expect("snapshot");
    let t = snapshot.task_runs_of(job_run).expect("read").pop().expect("a task run");
    let attempts = snapshot.attempts_of(t.id).expect("read").iter().map(|a| (a.reason, a.pid)).collect();
    (t.state, t.attempt, attempts)
}

/// A node on a thread and an actix system of its own that submits a run of `j`: its id, the
/// signal that drops the node without a word (no graceful stop), and its thread.
fn node_on_thread(config: EngineConfig) -> (u64, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, submitted) = std::sync::mpsc::channel();
    let (die, dying) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let system = actix::System::new();
        system.block_on(async move {
            let handle = crate::engine::start(config);
            handle.resume_all().await.expect("resume");
            let id = handle.submit_request(SubmitRequest { job: "j".into(), ..Default::default() }).await;
            tx.send(id.expect("submit").job_run).expect("send");
            let _ = dying.await;
            drop(handle);
        });
        drop(system);
    });
    (submitted.recv().expect("submitted"), die, thread)
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Running, not a zombie: a dead node's process has nobody left in this test to reap it.
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X")
}

/// Node A owns a job run whose attempt runs on A; A dies without a word (its engine dropped,
/// its lease made to pass); node B adopts the run within the lease, records A's attempt
/// `interrupted` and retries it to success. A's sleeping process is not B's to kill.
#[test]
fn a_dead_nodes_job_run_is_adopted_and_its_attempt_retried_elsewhere() {
    let Some(db) = TestDb::get() else { return };
    let (dir_a, dir_b) = (crate::state_dir::private_tempdir(), crate::state_dir::private_tempdir());
    let marker = dir_a.path().join("started-once");
    let text = workflow(&marker);
    let (config_a, backend_a) = node_config(&db, dir_a.path(), &text, "node-a");
    let (config_b, backend_b) = node_config(&db, dir_b.path(), &text, "node-b");

    // Node A, on a thread and an actix system of its own, submits and runs the first attempt.
    let (j, die, a) = node_on_thread(config_a);
    wait_until(
        "A's attempt to run with its pid",
        Duration::from_secs(20),
        || matches!(task_of(&backend_a, j), (TaskState::Running, 1, ref a) if a.len() == 1 && a[0].1.is_some()),
    );
    let a_id = db.psql("SELECT id FROM nodes WHERE name = 'node-a'").trim().to_string();
    assert_eq!(db.psql(&format!("SELECT owner_node, owner_epoch FROM job_runs WHERE id = {j}")).trim(), {
        format!("{a_id}|1")
    });
    let first_pid = task_of(&backend_a, j).2[0].1;

    let system = actix::System::new();
    system.block_on(async move {
        let handle = crate::engine::start(config_b);
        assert_eq!(handle.resume_all().await.expect("resume"), [], "A is live: nothing to adopt");
        die.send(()).expect("A is running");
        tokio::task::spawn_blocking(move || a.join().expect("A's thread")).await.expect("join");
        db.psql(&format!("UPDATE nodes SET lease_until = now() - interval '1s' WHERE id = {a_id}"));
        let lease = Duration::from_millis(crate::model::lease::MIN_LEASE_MS);
        let ended = tokio::time::timeout(lease + Duration::from_secs(20), handle.wait(vec![j])).await;
        assert_eq!(ended.expect("B ended it in time").expect("wait"), [(j, JobState::Succeeded)]);
        let (state, attempt, attempts) = task_of(&backend_b, j);
        assert_eq!((state, attempt), (TaskState::Succeeded, 2));
        assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [Some(FailReason::Interrupted), None]);
        let b_id = db.psql("SELECT id FROM nodes WHERE name = 'node-b'").trim().to_string();
        let owner = db.psql(&format!("SELECT owner_node, owner_epoch FROM job_runs WHERE id = {j}"));
        assert_eq!(owner.trim(), format!("{b_id}|2"), "adopted once, at the next epoch");
        let snapshot = backend_b.snapshot().expect("snapshot");
        let t = snapshot.task_runs_of(j).expect("read").pop().expect("task run");
        let first = &snapshot.attempts_of(t.id).expect("read")[0];
        assert_eq!(first.detail.as_deref(), Some("its node died while it ran"));
        drop(snapshot);
        if let Some(pid) = first_pid {
            assert!(alive(pid), "B killed a process of another node");
        }
        handle.shutdown().await;
    });
    kill_group(first_pid);
}

/// A node whose lease passed (here: made to pass in the database) finds out at its next renewal:
/// it kills its attempt, drops its job run without committing, joins again under a new id, and
/// then adopts its old job run like any node would, retrying the interrupted attempt.
#[test]
fn a_node_that_lost_its_lease_kills_its_attempts_and_rejoins_under_a_new_id() {
    let Some(db) = TestDb::get() else { return };
    let dir = crate::state_dir::private_tempdir();
    let marker = dir.path().join("started-once");
    let (config, backend) = node_config(&db, dir.path(), &workflow(&marker), "node-a");
    let system = actix::System::new();
    let first_pid = system.block_on(async move {
        let handle = crate::engine::start(config);
        handle.resume_all().await.expect("resume");
        let submitted = handle.submit_request(SubmitRequest { job: "j".into(), ..Default::default() }).await;
        let j = submitted.expect("submit").job_run;
        let running = {
            let backend = backend.clone();
            move || matches!(task_of(&backend, j), (TaskState::Running, 1, ref a) if a[0].1.is_some())
        };
        let start = Instant::now();
        while !tokio::task::spawn_blocking(running.clone()).await.expect("read") {
            assert!(start.elapsed() < Duration::from_secs(20), "the first attempt never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first_pid = task_of(&backend, j).2[0].1.expect("pid");
        let old_id = db.psql("SELECT id FROM nodes WHERE name = 'node-a'").trim().to_string();
        db.psql(&format!("UPDATE nodes SET lease_until = now() - interval '1s' WHERE id = {old_id}"));

        let ended = tokio::time::timeout(Duration::from_secs(30), handle.wait(vec![j])).await;
        assert_eq!(ended.expect("ended in time").expect("wait"), [(j, JobState::Succeeded)]);
        assert!(!alive(first_pid), "the attempt of the lost lease was killed");
        let new_id = db.psql("SELECT id FROM nodes WHERE name = 'node-a'").trim().to_string();
        assert_ne!(new_id, old_id, "joined again under a new id");
        let owner = db.psql(&format!("SELECT owner_node, owner_epoch FROM job_runs WHERE id = {j}"));
        assert_eq!(owner.trim(), format!("{new_id}|2"), "adopted by the new id");
        let (state, attempt, attempts) = task_of(&backend, j);
        assert_eq!((state, attempt), (TaskState::Succeeded, 2));
        assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [Some(FailReason::Interrupted), None]);
        handle.shutdown().await;
        first_pid
    });
    kill_group(Some(first_pid));
}

/// A node claimed a task run of another node's job run and died before its owner heard it
/// started it; then the owner died too. The adopter records that claim as attempt 1,
/// `interrupted` (it may have run), and the policy retries it as attempt 2, which runs.
#[test]
fn a_claim_its_owner_never_heard_of_counts_as_an_interrupted_attempt_for_the_adopter() {
    let Some(db) = TestDb::get() else { return };
    let (dir_a, dir_b) = (crate::state_dir::private_tempdir(), crate::state_dir::private_tempdir());
    let text = "[jobs.j.tasks.gpu]\nrun = \"true\"\nrequires = [\"gpu\"]\n";
    let (config_a, backend_a) = node_config(&db, dir_a.path(), text, "node-a");
    let (mut config_b, _) = node_config(&db, dir_b.path(), text, "node-b");
    config_b.labels = vec!["gpu".into()];
    config_b.cluster.as_mut().expect("cluster").labels = vec!["gpu".into()];

    // A cannot run it (no label): X, a node with the label, claims it and dies without a word.
    let (j, die, a) = node_on_thread(config_a);
    wait_until("the task run to be queued", Duration::from_secs(20), || task_of(&backend_a, j).0 == TaskState::Queued);
    let store = backend_a.store().clone();
    let x = backend_a
        .run(async move {
            let mut c = store.connection().await?;
            let x = queue::register_node(&mut c, "node-x", &["gpu".to_string()], Duration::from_secs(60)).await?;
            let claimed = queue::claim(&mut c, &x, "default", 1, None).await?;
            Ok((x, claimed.len()))
        })
        .expect("X claims");
    assert_eq!(x.1, 1, "X claimed it");
    die.send(()).expect("A is running");
    a.join().expect("A's thread");
    db.psql("UPDATE nodes SET lease_until = now() - interval '1s' WHERE name IN ('node-a', 'node-x')");
    let row = db.psql(&format!("SELECT state, node FROM task_runs WHERE job_run = {j}"));
    assert_eq!(row.trim(), format!("running|{}", x.0.id), "running on X, the owner's record queued");

    adopt_at_start_until_succeeded(config_b, j);
    assert_unheard_then_retried(&db, j, x.0.id);
}

/// A node claimed a task run of a live owner's job run and died before the owner heard it
/// started it (paused between its process's start and its `Started` letter): the owner records
/// that claim as attempt 1, `interrupted`, when it finds the runner dead, and another node runs
/// the retry, attempt 2.
#[test]
fn a_claim_a_live_owner_never_heard_of_counts_as_an_interrupted_attempt_when_its_runner_dies() {
    let Some(db) = TestDb::get() else { return };
    let (dir_a, dir_b) = (crate::state_dir::private_tempdir(), crate::state_dir::private_tempdir());
    let text = "[settings]\nlease = \"3s\"\n[jobs.j.tasks.gpu]\nrun = \"true\"\nrequires = [\"gpu\"]\n";
    let (config_a, backend_a) = node_config(&db, dir_a.path(), text, "node-a");
    let (mut config_b, _) = node_config(&db, dir_b.path(), text, "node-b");
    config_b.labels = vec!["gpu".into()];
    config_b.cluster.as_mut().expect("cluster").labels = vec!["gpu".into()];

    // A cannot run it (no label): X, a node with the label, claims it and dies without a word.
    let (j, die, a) = node_on_thread(config_a);
    wait_until("the task run to be queued", Duration::from_secs(20), || task_of(&backend_a, j).0 == TaskState::Queued);
    let store = backend_a.store().clone();
    let x = backend_a
        .run(async move {
            let mut c = store.connection().await?;
            let x = queue::register_node(&mut c, "node-x", &["gpu".to_string()], Duration::from_secs(60)).await?;
            let claimed = queue::claim(&mut c, &x, "default", 1, None).await?;
            Ok((x, claimed.len()))
        })
        .expect("X claims");
    assert_eq!(x.1, 1, "X claimed it");
    db.psql("UPDATE nodes SET lease_until = now() - interval '1s' WHERE name = 'node-x'");

    // A, alive, owns the run; B has the label and runs it once A put the row back.
    let system = actix::System::new();
    let db = &db;
    system.block_on(async move {
        let handle = crate::engine::start(config_b);
        handle.resume_all().await.expect("resume");
        // Polled without blocking this thread, which runs B.
        let started = std::time::Instant::now();
        let succeeded = format!("SELECT count(*) FROM task_runs WHERE job_run = {j} AND state = 'succeeded'");
        while db.psql(&succeeded).trim() != "1" {
            assert!(started.elapsed() < Duration::from_secs(20), "the task run did not succeed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        handle.shutdown().await;
    });
    die.send(()).expect("A is running");
    a.join().expect("A's thread");
    assert_unheard_then_retried(db, j, x.0.id);
}

/// Node B (`config`) starts, adopts job run `j` of a dead node at start and runs it to success.
fn adopt_at_start_until_succeeded(config: EngineConfig, j: u64) {
    let system = actix::System::new();
    system.block_on(async move {
        let handle = crate::engine::start(config);
        let resumed = handle.resume_all().await.expect("resume");
        assert_eq!(resumed, [(j, "j".to_string())], "B adopted it at start");
        let ended = tokio::time::timeout(Duration::from_secs(20), handle.wait(vec![j])).await;
        assert_eq!(ended.expect("ended in time").expect("wait"), [(j, JobState::Succeeded)]);
        handle.shutdown().await;
    });
}

/// X's unheard claim is attempt 1, `interrupted` with the detail saying so and X as its node;
/// attempt 2 succeeded on another node; no attempt number was given twice.
fn assert_unheard_then_retried(db: &TestDb, j: u64, x: i64) {
    let rows = db.psql(&format!(
        "SELECT a.n, a.node = {x}, t.attempt, t.state FROM attempts a JOIN task_runs t ON t.id = a.task_run \
         WHERE t.job_run = {j} ORDER BY a.n"
    ));
    assert_eq!(rows.trim(), "1|t|2|succeeded\n2|f|2|succeeded", "attempts of j{j}");
    let snapshot = PgBackend::open(&db.url, PgOptions::default()).expect("open").snapshot().expect("snapshot");
    let t = snapshot.task_runs_of(j).expect("read").pop().expect("a task run");
    let attempts = snapshot.attempts_of(t.id).expect("read");
    assert_eq!(attempts[0].reason, Some(FailReason::Interrupted));
    assert_eq!(attempts[0].detail.as_deref(), Some("its node died before its start was heard"));
    assert_eq!(attempts[1].reason, None);
}

/// A node that claimed an attempt of its own job run runs it at once: the claim's commit
/// (`running` on the node as attempt 1) stands for the owner's records, which wait for the
/// attempt's end (here: `start_write_delay` of a minute). The node dies meanwhile: the record
/// still says `queued` and no attempt row exists, so the adopter finds a claim its owner never
/// heard of — attempt 1, `interrupted`, its node the dead one — and retries it as attempt 2.
#[test]
fn an_attempt_whose_start_its_owner_had_not_written_yet_is_adopted_as_an_unheard_claim() {
    let Some(db) = TestDb::get() else { return };
    let (dir_a, dir_b) = (crate::state_dir::private_tempdir(), crate::state_dir::private_tempdir());
    let marker = dir_a.path().join("started-once");
    let text = workflow(&marker);
    let (mut config_a, backend_a) = node_config(&db, dir_a.path(), &text, "node-a");
    config_a.cluster.as_mut().expect("cluster").start_write_delay = Duration::from_secs(60);
    let (config_b, backend_b) = node_config(&db, dir_b.path(), &text, "node-b");

    let (j, die, a) = node_on_thread(config_a);
    wait_until("A's attempt to run", Duration::from_secs(20), || {
        std::fs::read_to_string(&marker).is_ok_and(|pid| pid.ends_with('\n'))
    });
    let first_pid: u32 = std::fs::read_to_string(&marker).expect("marker").trim().parse().expect("pid");
    let a_id = db.psql("SELECT id FROM nodes WHERE name = 'node-a'").trim().to_string();
    let row = db.psql(&format!("SELECT state, node, attempt FROM task_runs WHERE job_run = {j}"));
    assert_eq!(row.trim(), format!("running|{a_id}|1"), "the claim: running on A as attempt 1");
    assert_eq!(task_of(&backend_a, j), (TaskState::Queued, 0, vec![]), "the owner wrote nothing of its start");

    die.send(()).expect("A is running");
    a.join().expect("A's thread");
    db.psql(&format!("UPDATE nodes SET lease_until = now() - interval '1s' WHERE id = {a_id}"));
    adopt_at_start_until_succeeded(config_b, j);
    let (state, attempt, attempts) = task_of(&backend_b, j);
    assert_eq!((state, attempt), (TaskState::Succeeded, 2));
    assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [Some(FailReason::Interrupted), None]);
    assert_unheard_then_retried(&db, j, a_id.parse().expect("id"));
    kill_group(Some(first_pid));
}
