//! What the kill -9 campaign over workflow control (`tests/faults.rs`) found, each pinned down
//! with one deterministic kill: a restart never makes a fan-out's items again, and a socket
//! left loose by a kill between its bind and its chmod does not stop the next start.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{Project, wait_until};

/// The fan-out's own run is `running` without an attempt while its items run; a restart took
/// it for an interrupted attempt, retried it and made all its items a second time.
#[test]
fn a_restart_while_items_run_resumes_them_and_makes_none_again() {
    let p = Project::new(
        r#"
[settings]
workers = 2
[defaults]
retry = { max_attempts = 5, initial_interval = "10ms", jitter = 0.0, poison_after_crashes = 0 }
[jobs.j.tasks.fan]
for_each = ["a", "b", "c"]
for_each_concurrency = 1
env = { ITEM = "{{ item }}" }
run = 'echo "$ITEM" >> ran; sleep 0.3'
"#,
    );
    let mut child = p.spawn_run(&[]);
    wait_until(Duration::from_secs(20), "the first item to run", || {
        p.path().join("ran").exists() && p.tasks().iter().any(|t| t["item_index"] == 0 && t["state"] == "running")
    });
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 0, "the resumed run finishes");
    let tasks = p.tasks();
    let items: Vec<u64> = tasks.iter().filter_map(|t| t["item_index"].as_u64()).collect();
    assert_eq!(items.len(), 3, "three items, not made again on resume: {tasks:#?}");
    let node = tasks.iter().find(|t| t["task"] == "fan" && t["item_index"].is_null()).expect("the node");
    assert_eq!(node["state"], "succeeded");
    assert_eq!(node["attempt"], 0, "the node never ran an attempt of its own");
    let mut ran: Vec<String> =
        std::fs::read_to_string(p.path().join("ran")).expect("ran").lines().map(String::from).collect();
    ran.sort();
    assert_eq!(ran, ["a", "a", "b", "c"], "only the interrupted item ran twice");
}

/// What `gaffer run` left when killed between binding its control socket (mode from the
/// umask) and making it 0600: the next start refused the state dir (exit 3, "other users can
/// read it") although the socket is gaffer's own and replaced at start.
#[test]
fn a_loose_socket_left_by_a_killed_gaffer_does_not_stop_the_next_start() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'echo hi'\n");
    assert_eq!(p.run_json(&[]).0, 0);
    let socket = p.state_dir().join("gaffer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    drop(listener);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let tasks = p.run(&["tasks"]);
    assert!(tasks.status.success(), "{}", String::from_utf8_lossy(&tasks.stderr));
    assert!(!p.state_dir().join("gaffer.sock.new").exists(), "the side name is renamed into place");
}
