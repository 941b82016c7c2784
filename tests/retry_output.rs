//! `gaffer retry jN` says each task run it reopens once, through the real binary, on redb and
//! on a cluster node (PostgreSQL; skipped, and saying so, without it). A fan-out whose items
//! died was said twice: each item "queued again" by its node's retry, then "reopened with its
//! fan-out" for itself.

mod support;

use std::process::Stdio;
use std::time::Duration;

use gaffer::store::pg::testing::TestDb;
use support::{Project, Server, wait_for_socket, wait_until};

/// Items `a` and `b` die until the file `ok` exists; `c` succeeds.
const FLOW: &str = r#"
[jobs.f.tasks.each]
for_each = ["a", "b", "c"]
env = { ITEM = "{{ item }}" }
run = "test -e ok || test \"$ITEM\" = c"
retry = { max_attempts = 1 }
[jobs.f.tasks.after]
needs = ["each"]
run = "true"
"#;

/// `gaffer retry j1 ARGS…` once `ok` exists: its answer's lines, after checking the job run
/// then succeeds (`jobs --json` through the same node).
fn retry_then_succeed(p: &Project, store: &[&str]) -> Vec<String> {
    std::fs::write(p.path().join("ok"), "").expect("ok");
    let out = p.gaffer(&[&["retry", "j1"], store].concat()).stdin(Stdio::null()).output().expect("retry");
    assert!(out.status.success(), "retry: {}", String::from_utf8_lossy(&out.stderr));
    let state = || {
        let out = p.gaffer(&[&["jobs", "--json"], store].concat()).stdin(Stdio::null()).output().expect("jobs");
        let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        jobs[0]["state"].as_str().unwrap_or_default().to_string()
    };
    wait_until(Duration::from_secs(30), "the retried job run succeeds", || state() == "succeeded");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Two lines, one per dead item, each a different task run queued again.
fn assert_each_item_once(lines: &[String]) {
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines.iter().all(|l| l.ends_with("queued again (attempt 2 next)")), "{lines:#?}");
    let ids: std::collections::BTreeSet<&str> = lines.iter().filter_map(|l| l.split(' ').nth(2)).collect();
    assert_eq!(ids.len(), 2, "{lines:#?}");
}

#[test]
fn a_whole_run_retry_says_each_reopened_item_once_on_redb() {
    let p = Project::new(FLOW);
    let run = p.run(&["run", "workflow.toml", "f"]);
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    let _server = Server::start(&p);
    assert_each_item_once(&retry_then_succeed(&p, &[]));
}

#[test]
fn a_whole_run_retry_says_each_reopened_item_once_on_a_cluster_node() {
    let Some(db) = TestDb::get() else { return };
    let url = db.postgres_url();
    let p = Project::new(FLOW);
    let _server = Server::spawn(
        p.gaffer(&["serve", "workflow.toml", "--headless", "--store", &url, "--node", "a"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_socket(&p.state_dir().join("gaffer.sock"));
    let out = p.gaffer(&["submit", "f", "--store", &url]).stdin(Stdio::null()).output().expect("submit");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "j1", "{}", String::from_utf8_lossy(&out.stderr));
    let failed = || {
        let out = p.gaffer(&["jobs", "--json", "--store", &url]).stdin(Stdio::null()).output().expect("jobs");
        let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        jobs[0]["state"] == "failed"
    };
    wait_until(Duration::from_secs(30), "the job run fails", failed);
    assert_each_item_once(&retry_then_succeed(&p, &["--store", &url]));
}
