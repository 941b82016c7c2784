//! Three `gaffer serve` nodes — separate processes, separate state dirs — on one private
//! PostgreSQL (`gaffer::store::pg::testing`; skipped, and saying so, without PostgreSQL
//! installed), as issue #11 item 8 asks: work spreads over every node, a node killed with
//! kill -9 or paused past its lease loses nothing, a declared queue's cap holds across nodes.
//!
//! Each task appends `start|end NODE TASK_RUN ATTEMPT PGID NANOS` to a file every node shares:
//! which node ran what, and when, as the processes themselves saw it (`NODE` is the serve
//! process's `NODE_TAG`, inherited by what it starts).

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gaffer::store::pg::testing::TestDb;
use serde_json::Value;
use support::{Project, Server, signal, wait_for_socket, wait_until};

/// The minimum lease: a node paused or killed is dead to the others 3 s after its last renewal.
const LEASE: &str = "3s";

struct Node {
    name: &'static str,
    project: Project,
    server: Option<Server>,
}

/// A private database, the shared file the tasks write, and the nodes serving it.
struct Cluster {
    db: TestDb,
    url: String,
    shared: tempfile::TempDir,
    nodes: Vec<Node>,
}

/// One line a task wrote.
#[derive(Debug, Clone)]
struct Mark {
    start: bool,
    node: String,
    task_run: u64,
    attempt: u32,
    pgid: i32,
    nanos: u128,
}

impl Cluster {
    /// `workflow` (its `{marks}` replaced by the shared file's path) served by nodes `a`, `b`
    /// and `c`, each with `workers` workers and the shortest lease.
    fn start(workflow: &str, workers: usize) -> Option<Cluster> {
        Some(Cluster::on(TestDb::get()?, workflow, workers, LEASE))
    }

    fn on(db: TestDb, workflow: &str, workers: usize, lease: &str) -> Cluster {
        let url = db.postgres_url();
        let shared = tempfile::tempdir().expect("tempdir");
        let marks = shared.path().join("marks");
        let text = format!(
            "[settings]\nworkers = {workers}\nlease = \"{lease}\"\n\n{}",
            workflow.replace("{marks}", &marks.display().to_string())
        );
        let mut cluster = Cluster { db, url, shared, nodes: Vec::new() };
        for name in ["a", "b", "c"] {
            cluster.nodes.push(Node { name, project: Project::new(&text), server: None });
        }
        // One at a time: the first migrates the database.
        for i in 0..3 {
            cluster.serve(i);
        }
        cluster
    }

    fn serve(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(node.project.path().join("serve.log")).expect("serve.log");
        let server = Server::spawn(
            node.project
                .gaffer(&["serve", "workflow.toml", "--headless", "--store", &self.url, "--node", node.name])
                .env("NODE_TAG", node.name)
                .env("RUST_LOG", "gaffer=info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log),
        );
        node.server = Some(server);
        wait_for_socket(&node.project.state_dir().join("gaffer.sock"));
    }

    fn pid(&self, i: usize) -> u32 {
        self.nodes[i].server.as_ref().expect("serving").child.id()
    }

    /// `gaffer submit JOB` through node `i`'s socket: the job run's id.
    fn submit(&self, i: usize, job: &str) -> u64 {
        let out = self.nodes[i]
            .project
            .gaffer(&["submit", job, "--store", &self.url])
            .stdin(Stdio::null())
            .output()
            .expect("gaffer submit");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
        text.trim().trim_start_matches('j').parse().unwrap_or_else(|_| panic!("a job run id: {text}"))
    }

    /// `gaffer ARGS --json --store URL`, read from the database by a state dir with no node.
    fn json(&self, args: &[&str]) -> Value {
        support::store_json(&self.nodes[0].project, args, &self.url, &self.shared.path().join("reader"))
    }

    fn job_state(&self, id: u64) -> String {
        let jobs = self.json(&["jobs"]);
        let job = jobs.as_array().and_then(|j| j.iter().find(|j| j["id"] == id).cloned());
        job.and_then(|j| j["state"].as_str().map(str::to_string)).unwrap_or_default()
    }

    fn wait_for_state(&self, id: u64, state: &str, limit: Duration) {
        wait_until(limit, &format!("job run j{id} {state}"), || {
            let now = self.job_state(id);
            assert!(now == state || now == "running" || now.is_empty(), "j{id} ended {now}, not {state}");
            now == state
        });
    }

    fn tasks(&self, id: u64) -> Vec<Value> {
        self.json(&["tasks", "--run", &format!("j{id}")]).as_array().cloned().unwrap_or_default()
    }

    /// Every attempt of every task run of job run `id`: (task run, attempt n) → its JSON.
    fn attempts(&self, id: u64) -> BTreeMap<(u64, u32), Value> {
        let mut all = BTreeMap::new();
        for task in self.tasks(id) {
            let task_run = task["id"].as_u64().expect("an id");
            let shown = self.json(&["show", &task_run.to_string()]);
            for a in shown["attempts"].as_array().into_iter().flatten() {
                all.insert((task_run, a["n"].as_u64().expect("n") as u32), a.clone());
            }
        }
        all
    }

    fn marks(&self) -> Vec<Mark> {
        let text = std::fs::read_to_string(self.shared.path().join("marks")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(Mark {
                    start: *f.first()? == "start",
                    node: f.get(1)?.to_string(),
                    task_run: f.get(2)?.parse().ok()?,
                    attempt: f.get(3)?.parse().ok()?,
                    pgid: f.get(4)?.parse().ok()?,
                    nanos: f.get(5)?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Attempts started on `node` that have not written their end.
    fn running_on(&self, node: &str) -> Vec<Mark> {
        let marks = self.marks();
        let ended = |m: &Mark| marks.iter().any(|e| !e.start && e.task_run == m.task_run && e.attempt == m.attempt);
        marks.iter().filter(|m| m.start && m.node == node && !ended(m)).cloned().collect()
    }

    /// The live row in `nodes` named `name`: its id.
    fn live_node_id(&self, name: &str) -> Option<i64> {
        let id = self
            .db
            .psql(&format!("SELECT id FROM nodes WHERE name = '{name}' AND NOT stopped AND lease_until > now()"));
        id.trim().parse().ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A paused node is let go on, so its SIGTERM is heard.
        for node in &self.nodes {
            if let Some(server) = &node.server {
                let _ =
                    std::process::Command::new("kill").args(["-s", "CONT", &server.child.id().to_string()]).status();
            }
        }
        for node in &mut self.nodes {
            drop(node.server.take());
        }
        // What a node killed with kill -9 left running.
        for mark in self.marks() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(mark.pgid), nix::sys::signal::Signal::SIGKILL);
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = std::fs::read_to_string(node.project.path().join("serve.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- node {} (last lines) ---", node.name);
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
            let rows = "SELECT 'task run', id, state, node::text, attempt::text FROM task_runs UNION ALL \
                        SELECT 'node', id, name, NULL, (lease_until > now() AND NOT stopped)::text FROM nodes \
                        UNION ALL SELECT 'attempt', task_run, n::text, node::text, NULL FROM attempts ORDER BY 1, 2";
            eprintln!("--- database ---\n{}", self.db.psql(rows));
            eprintln!(
                "--- marks ---\n{}",
                std::fs::read_to_string(self.shared.path().join("marks")).unwrap_or_default()
            );
        }
    }
}

/// A task's command: marks its start, sleeps `sleep` (a shell word, may use `$NODE_TAG`),
/// marks its end.
fn marked(sleep: &str) -> String {
    let mark =
        |what: &str| format!("echo {what} $NODE_TAG $GAFFER_TASK_RUN_ID $GAFFER_ATTEMPT $$ $(date +%s%N) >> {{marks}}");
    format!("{}; {sleep}; {}", mark("start"), mark("end"))
}

/// Job `job` of `n` tasks `t1`..`tn`, each running `command`, retried quickly, in `queue`.
fn job_of(job: &str, n: usize, command: &str, queue: Option<&str>) -> String {
    let mut text = String::new();
    for i in 1..=n {
        text.push_str(&format!(
            "[jobs.{job}.tasks.t{i}]\nrun = '{command}'\nretry = {{ max_attempts = 4, initial_interval = \"100ms\" }}\n"
        ));
        if let Some(q) = queue {
            text.push_str(&format!("queue = \"{q}\"\n"));
        }
    }
    text
}

fn assert_all_succeeded(cluster: &Cluster, id: u64, n: usize) {
    let tasks = cluster.tasks(id);
    assert_eq!(tasks.len(), n, "{tasks:?}");
    for t in &tasks {
        assert_eq!(t["state"], "succeeded", "{t}");
    }
}

#[test]
fn a_job_submitted_to_one_node_runs_on_all_three() {
    let workflow = job_of("spread", 12, &marked("sleep 0.3"), None);
    let Some(cluster) = Cluster::start(&workflow, 2) else { return };
    let id = cluster.submit(0, "spread");
    cluster.wait_for_state(id, "succeeded", Duration::from_secs(60));
    assert_all_succeeded(&cluster, id, 12);
    let marks = cluster.marks();
    for node in ["a", "b", "c"] {
        assert!(marks.iter().any(|m| m.start && m.node == node), "node {node} ran none of them: {marks:?}");
    }
    // The database says the same: every attempt row names the node that ran it, the owner's too.
    let nodes = cluster.db.psql("SELECT count(DISTINCT node), count(*) FILTER (WHERE node IS NULL) FROM attempts");
    assert_eq!(nodes.trim(), "3|0", "each node's attempts recorded as its own");
    let attempts = cluster.attempts(id);
    assert_eq!(attempts.len(), 12, "one attempt each, none doubled: {attempts:?}");
    // The note of the node each state dir joined as is private like the rest of it (was 0644).
    use std::os::unix::fs::PermissionsExt;
    for node in &cluster.nodes {
        let noted = std::fs::metadata(node.project.state_dir().join("cluster-node")).expect("cluster-node");
        assert_eq!(noted.permissions().mode() & 0o777, 0o600, "node {}", node.name);
    }
}

#[test]
fn a_node_killed_with_kill_9_mid_run_loses_nothing() {
    // The owner's own attempts run long enough to be cut off.
    let workflow = job_of("victim", 8, &marked("if [ $NODE_TAG = a ]; then sleep 5; else sleep 0.3; fi"), None);
    let Some(cluster) = Cluster::start(&workflow, 2) else { return };
    let id = cluster.submit(0, "victim");
    wait_until(Duration::from_secs(20), "the owner running an attempt", || !cluster.running_on("a").is_empty());
    let cut = cluster.running_on("a");
    signal(cluster.pid(0), "KILL");
    let killed_at = Instant::now();
    cluster.wait_for_state(id, "succeeded", Duration::from_secs(40));
    assert!(killed_at.elapsed() < Duration::from_secs(30), "adopted within a few leases");
    assert_all_succeeded(&cluster, id, 8);
    let attempts = cluster.attempts(id);
    for m in &cut {
        let a = &attempts[&(m.task_run, m.attempt)];
        assert_eq!(a["reason"], "interrupted", "the killed node's attempt {m:?}: {a}");
    }
    // Every attempt the killed node did not finish is recorded interrupted, none as a success.
    for m in cluster.marks().iter().filter(|m| m.start && m.node == "a") {
        let a = &attempts[&(m.task_run, m.attempt)];
        assert!(a["reason"] == "interrupted" || a["reason"].is_null(), "{m:?}: {a}");
    }
}

#[test]
fn a_node_killed_and_started_again_at_once_under_its_name_serves_and_its_work_goes_on() {
    // As systemd does it (Restart=on-failure, RestartSec=2): the same `--node` name and state
    // dir, long before the killed node's lease would have run out.
    let workflow = job_of("again", 8, &marked("if [ $NODE_TAG = b ]; then sleep 10; else sleep 0.3; fi"), None);
    let Some(mut cluster) = Cluster::start(&workflow, 2) else { return };
    let first = cluster.live_node_id("b").expect("b joined");
    let id = cluster.submit(0, "again");
    wait_heard_running(&cluster, "b", id);
    let mut b = cluster.nodes[1].server.take().expect("b serves");
    b.child.kill().expect("kill -9");
    let _ = b.child.wait();
    let killed_at = Instant::now();
    let cut = cluster.running_on("b");
    cluster.serve(1);
    let again = cluster.live_node_id("b").expect("b serves again");
    // Its lease was ended by the node started on its state dir (before, that start was
    // refused until the lease ran out: 30 s by default, and systemd gives up after 5 refusals).
    assert!(killed_at.elapsed() < Duration::from_secs(15), "b back after {:?}", killed_at.elapsed());
    assert_ne!(again, first, "a new node id");
    let said = std::fs::read_to_string(cluster.nodes[1].project.path().join("serve.log")).unwrap_or_default();
    assert!(
        said.contains(&format!("cluster: node b (id {first}), this state dir's previous process, is gone")),
        "{said}"
    );
    // The task processes the killed b left running were killed by the b started on its state dir.
    assert!(said.contains("task process(es) an earlier process on this state dir left running"), "{said}");
    wait_until(Duration::from_secs(5), "b's left-behind processes gone", || {
        cut.iter().all(|m| nix::sys::signal::killpg(nix::unistd::Pid::from_raw(m.pgid), None).is_err())
    });
    cluster.wait_for_state(id, "succeeded", Duration::from_secs(40));
    assert_all_succeeded(&cluster, id, 8);
    assert_cut_interrupted(&cluster, id, &cut);

    // Started with another state dir under a live node's name: refused once that node renewed
    // (after up to a lease and a second of waiting), said, not a panic.
    let other = Project::new(&format!("[settings]\nlease = \"{LEASE}\"\n[jobs.x.tasks.t]\nrun = \"true\"\n"));
    let out = other
        .gaffer(&["serve", "workflow.toml", "--headless", "--store", &cluster.url, "--node", "b"])
        .stdin(Stdio::null())
        .output()
        .expect("serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("gaffer: cannot start: postgres: a node named b is running"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Killed again, and started with another state dir: it waits for the lease to run out.
    let mut b = cluster.nodes[1].server.take().expect("b serves");
    b.child.kill().expect("kill -9");
    let _ = b.child.wait();
    let log = std::fs::File::create(other.path().join("serve.log")).expect("serve.log");
    let _elsewhere = Server::spawn(
        other
            .gaffer(&["serve", "workflow.toml", "--headless", "--store", &cluster.url, "--node", "b"])
            .env("RUST_LOG", "gaffer=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log),
    );
    wait_until(Duration::from_secs(15), "b serving from another state dir", || {
        cluster.live_node_id("b").is_some_and(|id| id != again)
    });
    let said = std::fs::read_to_string(other.path().join("serve.log")).unwrap_or_default();
    assert!(said.contains("waiting up to 3s for its lease to run out"), "{said}");
}

/// Until node `name` runs an attempt of job run `id` and the owner heard of every attempt it
/// runs (`running` there), so the pause cuts attempts the owner knows of. A claim made after
/// this look and before the signal is an unheard one: it is recorded `interrupted` too
/// ([`assert_cut_interrupted`]).
fn wait_heard_running(cluster: &Cluster, name: &str, id: u64) {
    wait_until(Duration::from_secs(20), &format!("{name} running an attempt its owner heard of"), || {
        let on = cluster.running_on(name);
        let tasks = cluster.tasks(id);
        let heard = |m: &Mark| tasks.iter().any(|t| t["id"] == m.task_run && t["state"] == "running");
        !on.is_empty() && on.iter().all(heard)
    });
}

/// The attempts `cut` (running on a node when it stopped or died), as job run `id` recorded
/// them: every one `interrupted` — one the owner heard start as any attempt of a dead runner, one
/// it never heard of as an unheard claim (`model::lease::dead_runner`): its number is never run
/// again, and the cut process's late outcome is refused.
fn assert_cut_interrupted(cluster: &Cluster, id: u64, cut: &[Mark]) {
    let attempts = cluster.attempts(id);
    assert!(!cut.is_empty(), "nothing was cut");
    for m in cut {
        let a = &attempts[&(m.task_run, m.attempt)];
        assert_eq!(a["reason"], "interrupted", "the cut attempt {m:?}: {a}");
    }
}

/// Node `i` (`name`) paused with SIGSTOP once it runs an attempt of job run `id`, until that run
/// succeeded without it (6 task runs), then let go on with SIGCONT: the attempts it was running
/// when paused, once their processes are gone (it kills them on finding its lease lost).
fn pause_until_done_elsewhere(cluster: &Cluster, i: usize, name: &str, id: u64) -> Vec<Mark> {
    wait_heard_running(cluster, name, id);
    signal(cluster.pid(i), "STOP");
    let cut = cluster.running_on(name);
    cluster.wait_for_state(id, "succeeded", Duration::from_secs(40));
    assert_all_succeeded(cluster, id, 6);
    signal(cluster.pid(i), "CONT");
    wait_until(Duration::from_secs(20), &format!("{name}'s orphaned processes killed"), || {
        cut.iter().all(|m| nix::sys::signal::killpg(nix::unistd::Pid::from_raw(m.pgid), None).is_err())
    });
    cut
}

#[test]
fn a_node_paused_past_its_lease_is_fenced_out_and_rejoins() {
    // a's attempts outlast its pause, until the file `{marks}.quick` says otherwise.
    let slow_on_a = "if [ $NODE_TAG = a ] && [ ! -e {marks}.quick ]; then sleep 30; else sleep 0.3; fi";
    let workflow = job_of("paused", 6, &marked(slow_on_a), None);
    let Some(cluster) = Cluster::start(&workflow, 2) else { return };
    let first_id = cluster.live_node_id("a").expect("a joined");
    let id = cluster.submit(0, "paused");
    // b and c adopt the run, record a's attempts interrupted and run them again; a, let go on,
    // finds its lease gone: it kills the processes it had started and joins again.
    let cut = pause_until_done_elsewhere(&cluster, 0, "a", id);
    wait_until(Duration::from_secs(20), "a rejoined under a new id", || {
        cluster.live_node_id("a").is_some_and(|id| id != first_id)
    });
    // Its late outcomes (the killed processes) were refused: the records stay interrupted.
    std::thread::sleep(Duration::from_secs(1));
    let attempts = cluster.attempts(id);
    for m in &cut {
        let a = &attempts[&(m.task_run, m.attempt)];
        assert_eq!(a["reason"], "interrupted", "a's attempt {m:?}: {a}");
    }
    assert_eq!(cluster.job_state(id), "succeeded");
    // The rejoined node works: it owns a new run, and runs some of it.
    std::fs::write(cluster.shared.path().join("marks.quick"), "").expect("quick");
    let again = cluster.submit(0, "paused");
    cluster.wait_for_state(again, "succeeded", Duration::from_secs(30));
    assert_all_succeeded(&cluster, again, 6);
    let ours: Vec<u64> = cluster.tasks(again).iter().filter_map(|t| t["id"].as_u64()).collect();
    let marks = cluster.marks();
    assert!(marks.iter().any(|m| m.node == "a" && ours.contains(&m.task_run)), "a ran none of j{again}: {marks:?}");
}

#[test]
fn a_declared_queue_cap_holds_across_nodes() {
    let workflow =
        format!("[queues.narrow]\nconcurrency = 2\n\n{}", job_of("capped", 10, &marked("sleep 0.3"), Some("narrow")));
    // One worker each: reaching the cap of 2 takes two nodes at once.
    let Some(cluster) = Cluster::start(&workflow, 1) else { return };
    let id = cluster.submit(0, "capped");
    cluster.wait_for_state(id, "succeeded", Duration::from_secs(60));
    assert_all_succeeded(&cluster, id, 10);
    let marks = cluster.marks();
    let mut edges: Vec<(u128, i32)> = marks.iter().map(|m| (m.nanos, if m.start { 1 } else { -1 })).collect();
    // An end before a start at the same instant: touching is not overlapping.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    assert!(most <= 2, "{most} attempts of the queue ran at once across nodes: {marks:?}");
    assert_eq!(most, 2, "the cap was reached (else the test shows nothing)");
    let nodes: std::collections::BTreeSet<&str> = marks.iter().map(|m| m.node.as_str()).collect();
    assert!(nodes.len() >= 2, "more than one node ran them: {nodes:?}");
}

#[test]
fn postgres_restarted_under_load_loses_nothing_and_doubles_nothing() {
    let Some(db) = TestDb::own_server() else { return };
    // A lease longer than the restart: the nodes ride it out instead of rejoining.
    let workflow = job_of("load", 12, &marked("sleep 0.5"), None);
    let cluster = Cluster::on(db, &workflow, 2, "20s");
    let id = cluster.submit(0, "load");
    wait_until(Duration::from_secs(20), "attempts running", || cluster.marks().len() >= 3);
    cluster.db.restart_server();
    cluster.wait_for_state(id, "succeeded", Duration::from_secs(60));
    assert_all_succeeded(&cluster, id, 12);
    let marks = cluster.marks();
    // At least once, never twice: each attempt's process started once, and each task run
    // has exactly one successful attempt.
    let mut starts: BTreeMap<(u64, u32), usize> = BTreeMap::new();
    for m in marks.iter().filter(|m| m.start) {
        *starts.entry((m.task_run, m.attempt)).or_default() += 1;
    }
    assert!(starts.values().all(|&n| n == 1), "an attempt started twice: {marks:?}");
    let attempts = cluster.attempts(id);
    for task in cluster.tasks(id) {
        let task_run = task["id"].as_u64().expect("id");
        let succeeded =
            attempts.iter().filter(|((t, _), a)| *t == task_run && a["reason"].is_null() && !a["ended_at"].is_null());
        assert_eq!(succeeded.count(), 1, "task run {task_run}: {attempts:?}");
    }
    for node in ["a", "b", "c"] {
        assert!(cluster.live_node_id(node).is_some(), "node {node} is still in the cluster");
    }
}

/// A submit made while PostgreSQL is down outlasts the nodes' leases: the node drops the new
/// run with the rest and joins again under a new id. The run must not then be written under
/// that live id with no actor deciding for it (found by hand: it stayed `running` forever,
/// and `submit` called it fatal): it is either never stored, or stored and run to its end.
#[test]
fn a_submit_while_postgres_is_down_past_the_lease_is_never_left_running_with_nobody_deciding() {
    let Some(db) = TestDb::own_server() else { return };
    let workflow =
        format!("{}\n{}", job_of("busy", 1, &marked("sleep 1"), None), job_of("late", 1, &marked("true"), None));
    let cluster = Cluster::on(db, &workflow, 2, LEASE);
    // Every node past its start (its socket comes before its first adoption round).
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(20), "the node serving", || log_of(node).contains("serving (pid"));
    }
    // A task running when the database goes: the worker that ran it is free, and reserved for
    // the late run's first start during the outage (the path the watchdog stopped the node on).
    let busy = cluster.submit(0, "busy");
    wait_until(Duration::from_secs(20), "busy running", || cluster.marks().iter().any(|m| m.start));
    cluster.db.stop_server();
    let submit = cluster.nodes[0]
        .project
        .gaffer(&["submit", "late", "--store", &cluster.url])
        .stdin(Stdio::null())
        .output()
        .expect("gaffer submit");
    let said = String::from_utf8_lossy(&submit.stderr).to_string();
    // Longer than the 14 s after which the watchdog's overlapping pings stopped a node whose
    // worker waited for a commit (by hand: "worker 0 has not answered the watchdog for 30 s").
    std::thread::sleep(Duration::from_secs(16));
    cluster.db.start_server();
    if !submit.status.success() {
        assert!(!said.contains("fatal"), "a lost lease is no fatal fault: {said}");
        assert!(said.contains("lost its lease") && said.contains("gaffer show"), "says what to check: {said}");
    }
    // Node a joins again, and its writer (retrying every 2 s) has had its turn at what it held.
    let log = || std::fs::read_to_string(cluster.nodes[0].project.path().join("serve.log")).unwrap_or_default();
    wait_until(Duration::from_secs(30), "node a joined again", || log().contains("joined again as node id"));
    std::thread::sleep(Duration::from_secs(4));
    wait_until(Duration::from_secs(30), "no job run left running", || {
        cluster.db.psql("SELECT count(*) FROM job_runs WHERE state = 'running'").trim() == "0"
    });
    assert_eq!(cluster.job_state(busy), "succeeded");
    let late = cluster.db.psql("SELECT state FROM job_runs WHERE job = 'late'").trim().to_string();
    if submit.status.success() || !late.is_empty() {
        assert_eq!(late, "succeeded", "submit said: {said}");
    }
    for node in &cluster.nodes {
        let server = node.server.as_ref().expect("serving");
        assert!(support::alive(server.child.id() as i32), "node {} stopped: {}", node.name, log_of(node));
    }
}

fn log_of(node: &Node) -> String {
    std::fs::read_to_string(node.project.path().join("serve.log")).unwrap_or_default()
}

#[test]
fn a_runner_paused_past_its_lease_has_its_attempts_run_again_by_the_owner() {
    let workflow = job_of("runner", 6, &marked("if [ $NODE_TAG = b ]; then sleep 30; else sleep 0.3; fi"), None);
    let Some(cluster) = Cluster::start(&workflow, 2) else { return };
    let id = cluster.submit(0, "runner");
    // The owner (a, alive) sees b's lease run out and runs b's attempts again elsewhere.
    let cut = pause_until_done_elsewhere(&cluster, 1, "b", id);
    std::thread::sleep(Duration::from_secs(1));
    assert_cut_interrupted(&cluster, id, &cut);
    assert_eq!(cluster.job_state(id), "succeeded");
}

#[test]
fn a_schedule_fires_once_per_fire_time_across_three_nodes() {
    let workflow =
        format!("[jobs.tick]\nschedule = \"*/2 * * * * *\"\n[jobs.tick.tasks.t]\nrun = '{}'\n", marked("true"));
    let Some(cluster) = Cluster::start(&workflow, 2) else { return };
    wait_until(Duration::from_secs(30), "three fire times", || cluster.marks().iter().filter(|m| m.start).count() >= 3);
    // Every node had its chance at each fire time: one job run each, never two.
    std::thread::sleep(Duration::from_secs(1));
    let mut starts: Vec<u128> = cluster.marks().iter().filter(|m| m.start).map(|m| m.nanos).collect();
    starts.sort();
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] > 1_000_000_000, "two runs of one fire time: {starts:?}");
    }
    let runs = cluster.db.psql("SELECT count(*) FROM job_runs WHERE job = 'tick'");
    let runs: usize = runs.trim().parse().expect("a count");
    assert!(runs >= starts.len() && runs <= starts.len() + 1, "{runs} job runs for {} starts", starts.len());
}

#[test]
fn an_owner_stopped_after_its_runner_was_killed_stops_within_its_lease_and_grace() {
    // Long attempts on a and b: only the kill, the stop and the lease end them; c runs what is
    // left over.
    let workflow = job_of("stranded", 6, &marked("if [ $NODE_TAG = c ]; then sleep 0.3; else sleep 60; fi"), None);
    let Some(mut cluster) = Cluster::start(&workflow, 2) else { return };
    let id = cluster.submit(0, "stranded");
    // b runs an attempt of a's run, and a heard it started (else b's claim is simply claimed
    // again: nothing to wait for).
    wait_until(Duration::from_secs(20), "b running an attempt a heard of", || {
        let on_b = cluster.running_on("b");
        let tasks = cluster.tasks(id);
        let heard = |m: &Mark| tasks.iter().any(|t| t["id"] == m.task_run && t["state"] == "running");
        !on_b.is_empty() && on_b.iter().all(heard)
    });
    let stranded = cluster.running_on("b");
    signal(cluster.pid(1), "KILL");
    for m in &stranded {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(m.pgid), nix::sys::signal::Signal::SIGKILL);
    }
    // b still looks alive to a for a lease: a's stop must wait no longer than that, plus the grace
    // of its own attempts, for an attempt whose runner will never report.
    let mut owner = cluster.nodes[0].server.take().expect("a serves");
    signal(owner.child.id(), "TERM");
    let stopped_at = Instant::now();
    let bound = Duration::from_secs(3 + 10 + 5);
    let status = loop {
        if let Some(status) = owner.child.try_wait().expect("poll a") {
            break status;
        }
        if stopped_at.elapsed() > bound {
            cluster.nodes[0].server = Some(owner);
            panic!("a did not stop within {bound:?} of its SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a stopped cleanly: {status:?}");
    // What b ran is recorded interrupted (by a before it stopped, or by c adopting a's run), and
    // c, adopting a's run, runs them again.
    cluster.wait_for_state(id, "succeeded", Duration::from_secs(40));
    assert_all_succeeded(&cluster, id, 6);
    let attempts = cluster.attempts(id);
    for m in &stranded {
        let a = &attempts[&(m.task_run, m.attempt)];
        assert_eq!(a["reason"], "interrupted", "b's attempt {m:?}: {a}");
    }
}

#[test]
fn what_no_live_node_can_run_and_what_runs_on_every_node_are_seen_from_any_node() {
    // As many attempts as workers: two run on each node.
    let mut workflow = job_of("busy", 6, &marked("sleep 30"), None);
    workflow.push_str("[jobs.gpu.tasks.fit]\nrun = 'true'\nrequires = [\"gpu\"]\n");
    let Some(cluster) = Cluster::start(&workflow, 2) else { return };
    let gpu = cluster.submit(0, "gpu");
    // status, read from the database by a machine with no node: nobody has the label.
    let status = cluster.json(&["status"]);
    let unroutable = status["unroutable"].as_array().cloned().unwrap_or_default();
    assert_eq!(unroutable.len(), 1, "{status:#}");
    assert_eq!(unroutable[0]["job_run"], gpu);
    assert_eq!(unroutable[0]["reason"], "requires [gpu]: no node has it — start one with --label gpu");
    let default = status["queues"].as_array().and_then(|q| q.iter().find(|q| q["name"] == "default").cloned());
    assert_eq!(default.expect("the default queue")["unroutable"], 1, "{status:#}");
    let shown = cluster.json(&["show", &format!("j{gpu}")]);
    assert_eq!(shown["tasks"][0]["blocked"], unroutable[0]["reason"], "{shown:#}");
    // Its owner, a, said so once, as one node does (the `task.blocked` event in its journal).
    let fit = unroutable[0]["task_run"].clone();
    let said = || {
        let journal = cluster.nodes[0].project.journal();
        journal.into_iter().filter(|e| e["event"] == "task.blocked" && e["task_run"] == fit).collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(10), "a's task.blocked event", || !said().is_empty());
    let said = said();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert_eq!((&said[0]["requires"], &said[0]["node_labels"]), (&serde_json::json!(["gpu"]), &serde_json::json!([])));
    // Node a's view of the cluster (what `gaffer tui` attached to it shows in Workers): the
    // attempts running on b and c too, each under its node.
    let busy = cluster.submit(0, "busy");
    wait_until(Duration::from_secs(20), "b and c running attempts", || {
        !cluster.running_on("b").is_empty() && !cluster.running_on("c").is_empty()
    });
    let state_dir = cluster.nodes[0].project.state_dir();
    let seen = |name: &str| -> Vec<(u64, u32)> {
        let nodes = gaffer::api::client::call(&state_dir, "GET", "/v1/nodes", None).expect("GET /v1/nodes");
        let nodes: Vec<gaffer::engine::NodeStatus> = serde_json::from_value(nodes).expect("nodes");
        let node = nodes.into_iter().find(|n| n.name == name && n.live).expect("the node, live");
        node.running.iter().map(|a| (a.task_run, a.attempt)).collect()
    };
    for name in ["b", "c"] {
        wait_until(Duration::from_secs(10), &format!("a to see {name}'s attempts"), || {
            let running = seen(name);
            cluster.running_on(name).iter().all(|m| running.contains(&(m.task_run, m.attempt)))
        });
    }
    let listed = || -> usize { ["a", "b", "c"].iter().map(|n| seen(n).len()).sum() };
    // The records say `running` once their owner wrote them: an attempt a claimed for itself
    // has its start written by its end or after `start_write_delay` (1 s), the claim's row
    // standing for it meanwhile; one on b or c once a heard it started.
    let recorded = || cluster.tasks(busy).iter().filter(|t| t["state"] == "running").count();
    wait_until(Duration::from_secs(10), "the six attempts, listed and recorded", || listed() == 6 && recorded() == 6);
    assert_eq!(listed(), recorded(), "each once");
}

/// The kill -9 campaign's cluster mode (issue #11 §8; `scripts/kill9-campaign.sh --cluster`
/// runs it with new seeds): job runs of many short tasks submitted to all three nodes, then,
/// round after round, a random node killed with kill -9 at a random moment and started again
/// once its lease ran out (a node cannot join under a live name). Then every job run must
/// succeed, none lost and none added; every task run has one accepted (succeeded) attempt, its
/// last, the others interrupted, numbered without gaps; no process ran an attempt the store
/// does not know of. Two kills unless `GAFFER_KILL9_CLUSTER_ROUNDS` says how many (it takes
/// about 6 s a round, so the test suite runs a short campaign); `GAFFER_KILL9_SEED` replays one.
#[test]
fn kill_9_campaign_across_three_nodes_loses_nothing_and_accepts_one_attempt_per_task_run() {
    let rounds = std::env::var("GAFFER_KILL9_CLUSTER_ROUNDS").ok().and_then(|r| r.parse::<usize>().ok()).unwrap_or(2);
    let seed: u64 = std::env::var("GAFFER_KILL9_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("kill -9 campaign (cluster): {rounds} rounds, GAFFER_KILL9_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    const JOB_RUNS: usize = 8;
    const TASKS: usize = 25;
    let mut workflow = String::from(
        "[defaults]\nretry = { max_attempts = 100, initial_interval = \"10ms\", jitter = 0.0, poison_after_crashes = 0 }\n",
    );
    for i in 1..=TASKS {
        let sleep = format!("sleep 0.{:02}", rng.u8(5..99));
        workflow.push_str(&format!("[jobs.w.tasks.t{i}]\nrun = '{}'\n", marked(&sleep)));
    }
    let Some(mut cluster) = Cluster::start(&workflow, 2) else { return };
    let ids: Vec<u64> = (0..JOB_RUNS).map(|k| cluster.submit(k % 3, "w")).collect();
    let all_ended = |cluster: &Cluster| {
        let jobs = cluster.json(&["jobs"]);
        jobs.as_array().is_some_and(|j| j.len() == JOB_RUNS && j.iter().all(|r| r["state"] != "running"))
    };
    let started = Instant::now();
    for round in 0..rounds {
        if all_ended(&cluster) {
            eprintln!("every job run ended before round {round}");
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.u64(200..2500)));
        let i = rng.usize(0..3);
        let name = cluster.nodes[i].name;
        let mut server = cluster.nodes[i].server.take().expect("serving");
        server.child.kill().expect("kill -9");
        let _ = server.child.wait();
        eprintln!("round {round}: killed {name} at {:?}", started.elapsed());
        // Its name is taken until its lease runs out.
        wait_until(Duration::from_secs(15), &format!("{name}'s lease to run out"), || {
            cluster.live_node_id(name).is_none()
        });
        std::thread::sleep(Duration::from_millis(rng.u64(0..1500)));
        cluster.serve(i);
    }
    for &id in &ids {
        cluster.wait_for_state(id, "succeeded", Duration::from_secs(120));
    }
    eprintln!("all {JOB_RUNS} job runs succeeded after {:?}", started.elapsed());
    let runs = cluster.db.psql("SELECT count(*) FROM job_runs");
    assert_eq!(runs.trim(), JOB_RUNS.to_string(), "no job run lost, none added (seed {seed})");
    let marks = cluster.marks();
    let (mut attempts_total, mut interrupted) = (0, 0);
    for &id in &ids {
        let tasks = cluster.tasks(id);
        assert_eq!(tasks.len(), TASKS, "j{id}: every task run is there (seed {seed})");
        let attempts = cluster.attempts(id);
        for t in &tasks {
            let task_run = t["id"].as_u64().expect("id");
            assert_eq!(t["state"], "succeeded", "seed {seed}: {t}");
            let last = t["attempt"].as_u64().expect("attempt") as u32;
            let ns: Vec<u32> = attempts.keys().filter(|(tr, _)| *tr == task_run).map(|(_, n)| *n).collect();
            assert_eq!(ns, (1..=last).collect::<Vec<_>>(), "task run {task_run}: attempts without gaps (seed {seed})");
            for n in 1..last {
                let a = &attempts[&(task_run, n)];
                assert_eq!(
                    a["reason"], "interrupted",
                    "task run {task_run}: only kills failed attempts (seed {seed}): {a}"
                );
            }
            let accepted = &attempts[&(task_run, last)];
            assert!(accepted["reason"].is_null(), "task run {task_run}: its last attempt succeeded (seed {seed})");
            let ran = |m: &&Mark| m.task_run == task_run;
            for m in marks.iter().filter(ran) {
                assert!(
                    m.attempt <= last,
                    "task run {task_run} ran attempt {}, the store knows {last} (seed {seed})",
                    m.attempt
                );
            }
            let ended = marks.iter().filter(ran).any(|m| !m.start && m.attempt == last);
            assert!(ended, "task run {task_run}: its accepted attempt ran to its end (seed {seed})");
            attempts_total += last;
            interrupted += last - 1;
        }
    }
    eprintln!(
        "kill -9 campaign (cluster): {} task runs, {attempts_total} attempts, {interrupted} interrupted, {} processes started",
        JOB_RUNS * TASKS,
        marks.iter().filter(|m| m.start).count()
    );
}
