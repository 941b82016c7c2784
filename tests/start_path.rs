//! The start path through the real binary: a task that finds a worker idle at submit is
//! claimed in the submit's own commit, so once `gaffer submit` has answered, the task run is
//! durably `running` with its attempt (SPEC §7: before the process is spawned), and a kill -9
//! from then on loses nothing: the restart records the attempt `interrupted` and runs it again.

mod support;

use std::time::Duration;

use support::{Project, Server, wait_until};

const WORKFLOW: &str = r#"
[settings]
workers = 2
[jobs.j.tasks.t]
retry = { max_attempts = 3, initial_interval = "10ms", jitter = 0.0 }
run = 'echo "$GAFFER_ATTEMPT" >> ran; [ -e go ] || sleep 30'
"#;

/// `gaffer serve`, once it says it serves: resumed runs have taken the inbox and dispatching is
/// released (a submit before that waits in its queue the ordinary way). `name`: its stderr.
fn serve(p: &Project, name: &str) -> Server {
    let said = p.path().join(name);
    let server = Server::spawn(
        p.gaffer(&["serve", "workflow.toml", "--headless"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&said).expect("stderr file")),
    );
    let text = || std::fs::read_to_string(&said).unwrap_or_default();
    wait_until(Duration::from_secs(10), "serve to say it serves", || text().contains("serving"));
    server
}

#[test]
fn a_kill_right_after_submit_answers_finds_the_task_running_and_the_restart_runs_it() {
    let p = Project::new(WORKFLOW);
    let mut server = serve(&p, "serve1.err");
    let out = p.run(&["submit", "j"]);
    assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reaped");

    // Read from the state dir (no server): what the submit's commit made durable.
    let t = p.task("t");
    assert_eq!(t["state"], "running", "durable at submit's answer: {t}");
    assert_eq!(t["attempt"], 1, "{t}");
    let id = t["id"].as_u64().expect("task run id").to_string();
    let shown = p.json(&["show", &id, "--json"]);
    assert_eq!(shown["attempts"][0]["n"], 1, "the attempt is in the same commit: {shown}");

    // The restart: attempt 1 interrupted (its process killed if it had started), attempt 2 runs.
    std::fs::write(p.path().join("go"), "").expect("go");
    let _server = serve(&p, "serve2.err");
    wait_until(Duration::from_secs(30), "the task run to succeed", || p.task("t")["state"] == "succeeded");
    let shown = p.json(&["show", &id, "--json"]);
    let attempts = shown["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{shown}");
    assert_eq!(attempts[0]["reason"], "interrupted", "{shown}");
    assert_eq!(attempts[1]["n"], 2, "{shown}");
    assert!(attempts[1]["reason"].is_null(), "{shown}");
    // Attempt 1 ran or not, depending on where the kill landed; attempt 2 ran: never zero times.
    let ran = std::fs::read_to_string(p.path().join("ran")).expect("ran");
    assert!(ran == "2\n" || ran == "1\n2\n", "attempts that ran: {ran:?}");
}

/// A store that refuses the submit's commit (its disk is full): the submit is refused, and the
/// task that a worker was reserved for never started (its `running` was to be in that commit,
/// and nothing spawns before it is durable).
#[test]
fn a_disk_that_refuses_the_submits_commit_starts_nothing() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'echo ran >> ran'\n");
    let Some(disk) = support::SmallDisk::mount(&p.state_dir(), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    // Filled only once serve says it serves (its start-up commit is durable then).
    let mut server = serve(&p, "serve.err");
    disk.fill(0);
    let submit = p.run(&["submit", "j"]);
    assert_ne!(submit.status.code(), Some(0), "a run that cannot be stored is refused");
    wait_until(Duration::from_secs(10), "serve to stop on the broken store", || {
        server.child.try_wait().expect("poll").is_some()
    });
    assert!(!p.path().join("ran").exists(), "the task started although its `running` was never stored");
    drop(disk);
}

/// `gaffer run` submits its jobs one by one, and a task may start as soon as its run is
/// committed: a SIGTERM while the later ones are still being submitted stops gracefully (the
/// started task is stopped, gaffer exits 143) rather than killing gaffer by the default action
/// and leaving the task running.
#[test]
fn a_sigterm_while_run_still_submits_stops_the_tasks_already_started() {
    let mut text = String::from("[settings]\nworkers = 2\n[jobs.a.tasks.t]\nrun = 'echo $$ > started; sleep 60'\n");
    for i in 0..300 {
        text.push_str(&format!("[jobs.b{i:03}.tasks.t]\nrun = 'true'\n"));
    }
    let p = Project::new(&text);
    let child = p.spawn_run(&["--headless"]);
    let started = p.path().join("started");
    wait_until(Duration::from_secs(20), "the first task to start", || {
        std::fs::read_to_string(&started).is_ok_and(|t| t.ends_with('\n'))
    });
    support::signal(child.id(), "TERM");
    let out = child.wait_with_output().expect("wait");
    let status = out.status;
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let pid: i32 = std::fs::read_to_string(&started).expect("started").trim().parse().expect("pid");
    let alive = support::alive(pid);
    if alive {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(!alive, "the task outlived gaffer (exit {status:?})");
    assert_eq!(status.code(), Some(143), "a graceful stop: {status:?} {said}");
}
