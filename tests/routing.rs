//! Routing by capability (issue #11): `requires` in the workflow file, `--label` on the node,
//! through the real binary — a task runs only on a node that has its labels, one nobody can run
//! says so (`status`, `show`, the `task.blocked` event), and `run`, being one node, refuses it.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Project, Server, named, wait_for_socket, wait_until};

const WORKFLOW: &str = r#"
[jobs.train.tasks.prep]
run = "echo prep"

[jobs.train.tasks.fit]
needs = ["prep"]
requires = ["gpu"]
run = "echo fit on $GAFFER_TASK_RUN_ID"

[jobs.plain.tasks.hello]
run = "echo hello"
"#;

fn shown_reason() -> Value {
    "requires [gpu]: no node has it — start one with --label gpu".into()
}

fn state_of(p: &Project, task: &str) -> String {
    p.task(task)["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_task_requiring_gpu_runs_on_a_node_labelled_gpu_and_unlabelled_tasks_run_anywhere() {
    let p = Project::new(WORKFLOW);
    let (code, events) = p.run_json(&["train", "plain", "--label", "eu", "--label", "gpu"]);
    assert_eq!(code, 0, "{events:#?}");
    for task in ["prep", "fit", "hello"] {
        assert_eq!(state_of(&p, task), "succeeded", "{task}");
    }
    assert!(named(&events, "task.blocked").is_empty(), "{events:#?}");
    let fit = p.task("fit");
    assert_eq!(fit["requires"], serde_json::json!(["gpu"]), "the task run carries its requires: {fit}");

    // GAFFER_LABELS says the same as --label (comma-separated).
    let p = Project::new(WORKFLOW);
    let out = p
        .gaffer(&["run", "workflow.toml", "train", "--headless"])
        .env("GAFFER_LABELS", "eu,gpu")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(state_of(&p, "fit"), "succeeded");

    // A node without labels runs a job that requires none.
    let p = Project::new(WORKFLOW);
    let (code, _) = p.run_json(&["plain"]);
    assert_eq!(code, 0);
    assert_eq!(state_of(&p, "hello"), "succeeded");
}

#[test]
fn run_refuses_a_job_this_one_node_could_never_finish_before_writing_anything() {
    let p = Project::new(WORKFLOW);
    let out = p.run(&["run", "workflow.toml", "train", "--label", "eu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("job `train`, task `fit`: requires [gpu]"), "{stderr}");
    assert!(stderr.contains("--label gpu"), "{stderr}");
    assert!(!p.state_dir().join("state.redb").exists(), "a refused run wrote a store");
}

#[test]
fn bad_labels_are_refused_with_the_reason() {
    let p = Project::new(WORKFLOW);
    for (args, env, says) in [
        (&["--label", "GPU"][..], None, "label `GPU` has 'G'"),
        (&["--label", "a b"][..], None, "label `a b` has ' '"),
        (&[][..], Some("gpu,,eu"), "a label must not be empty"),
    ] {
        let mut cmd = p.gaffer(&["run", "workflow.toml", "plain"]);
        cmd.args(args);
        if let Some(env) = env {
            cmd.env("GAFFER_LABELS", env);
        }
        let out = cmd.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} {env:?}: {stderr}");
    }
    // Set but empty is no labels, as unset is.
    let out = p.gaffer(&["run", "workflow.toml", "plain"]).env("GAFFER_LABELS", "").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = Project::new("[jobs.j.tasks.t]\nrun = 'x'\nrequires = [\"gpu\", \"Eu\"]\n");
    let out = bad.run(&["validate", "workflow.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("workflow.toml:3:20: `requires`: label `Eu` has 'E'"), "{stderr}");
}

/// `serve` waits: the task run stays queued, and says why everywhere a person looks, until a
/// node with the label (here: the same state dir, restarted with it) takes it.
#[test]
fn serve_keeps_a_task_nobody_can_run_queued_and_visibly_blocked_until_a_node_has_the_label() {
    let p = Project::new(WORKFLOW);
    let socket = p.state_dir().join("gaffer.sock");
    let serve = |labels: &[&str]| {
        let mut cmd = p.gaffer(&["serve", "workflow.toml", "--headless"]);
        cmd.args(labels.iter().flat_map(|l| ["--label", l])).stdin(std::process::Stdio::null());
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let server = Server::spawn(&mut cmd);
        wait_for_socket(&socket);
        server
    };
    let server = serve(&["eu"]);
    let out = p.run(&["submit", "train"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(10), "prep to succeed and fit to be queued", || {
        state_of(&p, "prep") == "succeeded" && state_of(&p, "fit") == "queued"
    });
    let fit = p.task("fit");
    let id = fit["id"].as_u64().expect("id");

    let blocked = |journal: &[Value]| journal.iter().any(|e| e["event"] == "task.blocked" && e["task_run"] == id);
    wait_until(Duration::from_secs(5), "the task.blocked event", || blocked(&p.journal()));
    let journal = p.journal();
    let event = journal.iter().find(|e| e["event"] == "task.blocked").expect("event");
    assert_eq!(
        (&event["task"], &event["requires"], &event["node_labels"]),
        (&"fit".into(), &serde_json::json!(["gpu"]), &serde_json::json!(["eu"]))
    );

    let status = p.json(&["status", "--json"]);
    assert_eq!(status["node"]["labels"], serde_json::json!(["eu"]), "{status:#}");
    let default =
        status["queues"].as_array().expect("queues").iter().find(|q| q["name"] == "default").expect("default");
    assert_eq!((default["queued"].as_u64(), default["unroutable"].as_u64()), (Some(1), Some(1)), "{status:#}");
    let listed = &status["unroutable"][0];
    assert_eq!((listed["task_run"].as_u64(), &listed["task"]), (Some(id), &"fit".into()), "{status:#}");
    let human = String::from_utf8_lossy(&p.run(&["status"]).stdout).to_string();
    let line =
        format!("task run {id} (job run j1, task fit) requires [gpu]: no node has it — start one with --label gpu");
    assert!(human.contains(&line), "{human}");
    assert!(human.contains("node labels: eu"), "{human}");

    let shown = p.json(&["show", &id.to_string(), "--json"]);
    assert_eq!(shown["blocked"], shown_reason(), "{shown:#}");
    let shown = String::from_utf8_lossy(&p.run(&["show", &id.to_string()]).stdout).to_string();
    assert!(shown.contains("blocked: requires [gpu]"), "{shown}");
    assert_eq!(p.task("fit")["blocked"], shown_reason(), "tasks --json says it too");
    let table = String::from_utf8_lossy(&p.run(&["tasks"]).stdout).to_string();
    assert!(table.lines().any(|l| l.contains("train.fit") && l.contains("blocked: no node has gpu")), "{table}");
    assert_eq!(state_of(&p, "fit"), "queued", "it waits, it does not fail");
    drop(server);
    assert_eq!(p.task("fit").get("blocked"), None, "with no node running, nothing is blocked");

    // With no instance, nothing runs at all: not one task's problem, so nothing is unroutable.
    let offline = p.json(&["status", "--json"]);
    assert_eq!((&offline["node"], &offline["unroutable"]), (&Value::Null, &serde_json::json!([])), "{offline:#}");

    // A node with the label takes it at its start (resume).
    let _server = serve(&["gpu"]);
    wait_until(Duration::from_secs(10), "fit to succeed on the gpu node", || state_of(&p, "fit") == "succeeded");
    let status = p.json(&["status", "--json"]);
    assert_eq!(status["unroutable"], serde_json::json!([]), "{status:#}");
}

/// `run` resumes unfinished job runs; one of theirs that this node cannot run would hold it
/// forever, so it stops, says which and why, and leaves the run queued for a node that can.
#[test]
fn run_stops_when_a_job_run_it_resumes_is_blocked_here() {
    let p = Project::new(WORKFLOW);
    {
        let _server = {
            let mut cmd = p.gaffer(&["serve", "workflow.toml", "--headless"]);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let server = Server::spawn(&mut cmd);
            wait_for_socket(&p.state_dir().join("gaffer.sock"));
            server
        };
        assert!(p.run(&["submit", "train"]).status.success());
        wait_until(Duration::from_secs(10), "fit to be queued", || state_of(&p, "fit") == "queued");
    }
    let out = p.run(&["run", "workflow.toml", "plain", "--headless"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(job run j1, task fit) cannot start on this node"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("blocked: requires [gpu]: no node has it — start one with --label gpu"), "{stdout}");
    assert_eq!(state_of(&p, "fit"), "queued", "left for a node that can run it");
}

/// A task run no node can start still leaves by its `queue_timeout` (dead-lettered), as one
/// waiting behind a full queue does.
#[test]
fn queue_timeout_holds_for_a_task_run_nobody_can_start() {
    let p = Project::new("[jobs.train.tasks.fit]\nrequires = [\"gpu\"]\nqueue_timeout = \"1s\"\nrun = \"true\"\n");
    let _server = Server::start(&p);
    assert!(p.run(&["submit", "train"]).status.success());
    wait_until(Duration::from_secs(10), "fit to be dead-lettered by its queue_timeout", || {
        state_of(&p, "fit") == "dead"
    });
    assert_eq!(p.task("fit")["reason"], "queue_timeout");
}
