//! The control API through its real clients: big answers streamed through the socket to the
//! CLI, server-sent events to `RemoteEngine` (what `gaffer tui` attaches with), and the
//! OpenAPI description it serves.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use gaffer::engine::Control;
use serde_json::Value;
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
            seen.push(event.expect("the stream stays open").name().as_str());
        }
        assert_eq!(seen.iter().filter(|e| **e == "task.succeeded").count(), 2, "{seen:?}");
        let tasks = remote.task_runs_of(1).await.expect("task runs");
        assert_eq!(tasks.len(), 2);
        let refused = remote.retry(gaffer::engine::Target::TaskRun(99)).await;
        assert!(refused.is_err_and(|e| e.to_string().contains("99")), "a refusal carries the instance's message");
    });
}

/// `GET /v1/openapi.json` describes this instance: every endpoint, this workflow's jobs and
/// params for `submit`, and every field the read endpoints answer with (a field added to
/// `report.rs` must be described in `api/openapi.rs`). `scripts/schemathesis.sh` checks the
/// rest against a live server.
#[test]
fn the_openapi_document_describes_every_endpoint_and_every_field() {
    let p = Project::new(
        "[jobs.build.tasks.compile]\nrun = 'echo \"cost usd=0.01 model=m\" >&3'\n\
         [jobs.deploy]\nparams = { target = 'staging' }\n[jobs.deploy.tasks.push]\nrun = 'true'\n",
    );
    assert_eq!(p.run_json(&[]).0, 0);
    let _server = Server::start(&p);
    let doc = gaffer::api::client::call(&p.state_dir(), "GET", "/v1/openapi.json", None).expect("the document");
    let mut paths: Vec<&str> = doc["paths"].as_object().expect("paths").keys().map(String::as_str).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/metrics",
            "/v1/cancel",
            "/v1/cost",
            "/v1/events",
            "/v1/job_runs/{id}/tasks",
            "/v1/jobs",
            "/v1/live",
            "/v1/logs/{id}",
            "/v1/nodes",
            "/v1/openapi.json",
            "/v1/queues/{queue}/pause",
            "/v1/queues/{queue}/resume",
            "/v1/retry",
            "/v1/show/{target}",
            "/v1/signal",
            "/v1/snapshot",
            "/v1/status",
            "/v1/submit",
            "/v1/tasks",
        ]
    );
    let schemas = &doc["components"]["schemas"];
    let jobs: Vec<&Value> = schemas["SubmitBody"]["oneOf"].as_array().expect("one per job").iter().collect();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[1]["properties"]["job"]["enum"], serde_json::json!(["deploy"]));
    assert!(jobs[1]["properties"]["params"]["properties"]["target"].is_object(), "{}", jobs[1]);

    let described = |schema: &str, value: &Value, what: &str| {
        // An object's own properties, or those of every part of an `allOf` (a flattened struct).
        let parts = schemas[schema]["allOf"].as_array().cloned().unwrap_or_else(|| vec![schemas[schema].clone()]);
        let properties: Vec<String> = parts
            .iter()
            .flat_map(|part| part["properties"].as_object().into_iter().flatten().map(|(k, _)| k.clone()))
            .collect();
        assert!(!properties.is_empty(), "no schema {schema}");
        for key in value.as_object().expect("an object").keys() {
            assert!(properties.contains(key), "{what} answers `{key}`, which schema {schema} does not describe");
        }
    };
    described("TaskRun", &p.tasks()[0], "tasks --json");
    described("JobRun", &p.json(&["jobs", "--json"])[0], "jobs --json");
    let shown = p.json(&["show", "1", "--json"]);
    described("TaskRunDetail", &shown, "show 1 --json");
    described("Attempt", &shown["attempts"][0], "show 1 --json (attempts)");
    described("ModelCost", &shown["attempts"][0]["models"][0], "show 1 --json (attempts' models)");
    described("JobRunDetail", &p.json(&["show", "j1", "--json"]), "show j1 --json");
    let status = p.json(&["status", "--json"]);
    described("Status", &status, "status --json");
    described("QueueStatus", &status["queues"][0], "status --json (queues)");
    let cost = p.json(&["cost", "--json"]);
    described("Cost", &cost, "cost --json");
    described("CostRow", &cost["rows"][0], "cost --json (rows)");
    described("LogChunk", &gaffer::api::client::call(&p.state_dir(), "GET", "/v1/logs/1", None).expect("log"), "logs");
    let loaded = gaffer::api::client::call(&p.state_dir(), "GET", "/v1/job_runs/1/tasks", None).expect("task runs");
    described("TaskRun", &loaded[0], "/v1/job_runs/1/tasks");
    assert_eq!(loaded[0], p.tasks()[0], "a loaded job run's task runs are shaped as `tasks --json`");
    let answer = &doc["paths"]["/v1/job_runs/{id}/tasks"]["get"]["responses"]["200"]["content"]["application/json"];
    assert_eq!(answer["schema"]["items"]["$ref"], "#/components/schemas/TaskRun", "{answer}");
}

/// Outside the document: another method is a 405 naming the one allowed, an unknown path a
/// 404, a body that does not parse a 400 — all in JSON, like every other refusal.
#[test]
fn refusals_outside_the_handlers_are_json_too() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let _server = Server::start(&p);
    let ask = |request: &str| {
        let mut stream = std::os::unix::net::UnixStream::connect(p.state_dir().join("gaffer.sock")).expect("connect");
        stream.write_all(request.as_bytes()).expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        answer.to_ascii_lowercase()
    };
    let wrong_method = ask("DELETE /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert!(wrong_method.starts_with("http/1.1 405") && wrong_method.contains("allow: get"), "{wrong_method}");
    let unknown = ask("GET /v2/nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert!(unknown.starts_with("http/1.1 404") && unknown.contains("\"error\""), "{unknown}");
    let body = "{\"job\": 5}";
    let bad_body = ask(&format!(
        "POST /v1/submit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert!(bad_body.starts_with("http/1.1 400") && bad_body.contains("application/json"), "{bad_body}");
    let whole_priority = serde_json::json!({"job": "j", "priority": 7.0});
    let submitted = gaffer::api::client::call(&p.state_dir(), "POST", "/v1/submit", Some(&whole_priority));
    assert!(submitted.is_ok(), "7.0 is an integer to JSON Schema: {submitted:?}");
}
