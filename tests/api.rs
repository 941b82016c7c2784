//! The control API through its real clients: big answers streamed through the socket to the
//! CLI, server-sent events to `RemoteEngine` (what `gaffer tui` attaches with), and the
//! OpenAPI description it serves.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use gaffer::engine::Control;
use support::*;

/// Thousands of task runs: an answer of more than a megabyte, sent in chunks as it is read.
#[test]
fn a_large_answer_streams_through_the_socket_whole() {
    let mut workflow = String::from("[settings]\nworkers = 4\n");
    for i in 0..2000 {
        workflow.push_str(&format!("[jobs.j{}.tasks.t{i}]\nrun = 'true'\n", i / 100));
    }
    let p = Project::new(&workflow);
    assert!(p.run(&["run", "workflow.toml", "--noop-executor", "--headless"]).status.success());
    let offline = p.run(&["tasks", "--json"]);
    let _server = Server::start(&p);
    let online = p.run(&["tasks", "--json"]);
    assert!(online.status.success(), "{}", String::from_utf8_lossy(&online.stderr));
    assert!(online.stdout.len() > 1 << 20, "a large answer: {} bytes", online.stdout.len());
    assert_eq!(online.stdout, offline.stdout, "the same answer through the socket as from the state dir");
    let tasks: serde_json::Value = serde_json::from_slice(&online.stdout).expect("json");
    assert_eq!(tasks.as_array().map(Vec::len), Some(2000));

    let mut raw = std::os::unix::net::UnixStream::connect(p.state_dir().join("gaffer.sock")).expect("connect");
    raw.write_all(b"GET /v1/tasks HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).expect("read");
    let head = String::from_utf8_lossy(&answer[..answer.len().min(512)]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "streamed, not built whole: {head}");

    let filtered = p.json(&["tasks", "--json", "--job", "j3"]);
    assert_eq!(filtered.as_array().map(Vec::len), Some(100));
    let unknown = p.run(&["tasks", "--state", "nope"]);
    assert_eq!(unknown.status.code(), Some(2), "an error found before the first item is still a 400");
    let jobs = p.json(&["jobs", "--json"]);
    assert_eq!(jobs.as_array().map(Vec::len), Some(20));
}

/// `gaffer tui`'s client: requests and the SSE stream of a running `serve`.
#[test]
fn remote_engine_follows_the_event_stream() {
    let p = Project::new("[jobs.j.tasks.a]\nrun = 'true'\n[jobs.j.tasks.b]\nrun = 'true'\nneeds = ['a']\n");
    let _server = Server::start(&p);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let remote = gaffer::api::RemoteEngine::connect(&p.state_dir()).await.expect("connect");
        let mut events = remote.subscribe().await.expect("subscribe");
        let submitted = tokio::task::spawn_blocking({
            let p_dir = p.path().to_path_buf();
            let state = p.state_dir();
            move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_gaffer"))
                    .args(["submit", "j"])
                    .current_dir(p_dir)
                    .env("GAFFER_STATE_DIR", state)
                    .output()
                    .expect("submit")
            }
        });
        assert!(submitted.await.expect("join").status.success());
        let mut seen = Vec::new();
        while !seen.contains(&"job.succeeded") {
            let event = tokio::time::timeout(Duration::from_secs(20), events.recv()).await.expect("an event in time");
            seen.push(event.expect("the stream stays open").event);
        }
        assert_eq!(seen.iter().filter(|e| **e == "task.succeeded").count(), 2, "{seen:?}");
        let tasks = remote.task_runs_of(1).await.expect("task runs");
        assert_eq!(tasks.len(), 2);
        let refused = remote.retry(gaffer::engine::Target::TaskRun(99)).await;
        assert!(refused.is_err_and(|e| e.to_string().contains("99")), "a refusal carries the instance's message");
    });
}
