//! A hostile machine, on disk (issue 9, items 1, 2 and 5): a state dir another user made or can
//! write to, links planted in it, a damaged store, and task logs filling the disk. Each test
//! plays the reproduction through the real binary.

mod support;

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Project, SmallDisk};

const ONE_TASK: &str = "[jobs.j.tasks.t]\nrun = 'echo hello from the task'\n";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// Another user's uid to hand files to, if this process may (root, as in CI).
fn other_user() -> Option<u32> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to make files of another user");
        return None;
    }
    Some(65534) // nobody
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown");
}

/// `cmd` run as `nobody` through setpriv, if this process may.
fn as_nobody(program: &str) -> Option<Command> {
    other_user()?;
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs setpriv");
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
    Some(cmd)
}

// ---------------------------------------------------------------------------------------------
// 1. Nobody else's state dir.

#[test]
fn a_state_dir_others_can_write_to_is_refused_with_the_fix_and_nothing_is_written() {
    let p = Project::new(ONE_TASK);
    std::fs::DirBuilder::new().mode(0o777).create(p.state_dir()).expect("mkdir");
    chmod(&p.state_dir(), 0o777);
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("other users can write to it (mode 0777)"), "{said}");
    assert!(said.contains(&format!("chmod 700 {}", p.state_dir().display())), "the exact fix: {said}");
    assert_eq!(std::fs::read_dir(p.state_dir()).expect("dir").count(), 0, "nothing was written in it");
    // Read commands refuse it too, before reading it or talking to a socket in it.
    let tasks = p.run(&["tasks"]);
    assert_eq!(tasks.status.code(), Some(3), "{}", stderr(&tasks));
    chmod(&p.state_dir(), 0o700);
    assert_eq!(p.run(&["run", "workflow.toml", "--headless"]).status.code(), Some(0));
}

#[test]
fn an_existing_state_dir_readable_by_others_is_refused_for_reading_too() {
    let p = Project::new(ONE_TASK);
    assert_eq!(p.run(&["run", "workflow.toml", "--headless"]).status.code(), Some(0));
    chmod(&p.state_dir(), 0o755);
    for args in [&["tasks"][..], &["logs", "1"], &["show", "1"], &["run", "workflow.toml", "--headless"]] {
        let out = p.run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("other users can read it (mode 0755); fix: chmod 700"), "{}", stderr(&out));
    }
    let doctor = p.run(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(3));
    assert!(stdout(&doctor).contains("FAIL") && stdout(&doctor).contains("chmod 700"), "{}", stdout(&doctor));
}

#[test]
fn a_token_planted_by_another_user_in_an_open_state_dir_never_serves() {
    let p = Project::new(ONE_TASK);
    let Some(mut plant) = as_nobody("sh") else { return };
    // The reproduction: the other user finds (or makes) an open state dir and plants a token
    // they know, to drive `serve --listen` of its owner.
    chmod(p.path(), 0o755);
    std::fs::DirBuilder::new().mode(0o777).create(p.state_dir()).expect("mkdir");
    chmod(&p.state_dir(), 0o777);
    let token = p.state_dir().join("token");
    let status = plant
        .arg("-c")
        .arg(format!("umask 022; echo {} > '{}'", "a".repeat(64), token.display()))
        .status()
        .expect("plant");
    assert!(status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let serve = |p: &Project| {
        p.gaffer(&["serve", "workflow.toml", "--headless", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .output()
            .expect("serve")
    };
    let out = serve(&p);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // The owner follows the advice for the dir: the planted token is refused next, by owner.
    chmod(&p.state_dir(), 0o700);
    let out = serve(&p);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("token: owned by nobody (uid 65534), not by you"), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("fix: rm {}", token.display())), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&token).expect("token"), format!("{}\n", "a".repeat(64)), "left as it was");
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    let p = Project::new(ONE_TASK);
    let Some(nobody) = other_user() else { return };
    assert_eq!(p.run(&["run", "workflow.toml", "--headless"]).status.code(), Some(0));
    chown(&p.state_dir(), nobody);
    for args in [&["run", "workflow.toml", "--headless"][..], &["status"], &["tasks"], &["retry", "1"]] {
        let out = p.run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("owned by nobody (uid 65534), not by you (root (uid 0))"), "{}", stderr(&out));
    }
    // And the other way round: another user running gaffer on this user's state dir.
    chown(&p.state_dir(), 0);
    chmod(p.path(), 0o755);
    let Some(mut cmd) = as_nobody(env!("CARGO_BIN_EXE_gaffer")) else { return };
    let out = cmd.arg("--state-dir").arg(p.state_dir()).arg("tasks").output().expect("as nobody");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn a_link_planted_under_logs_is_never_followed() {
    let p = Project::new(ONE_TASK);
    assert_eq!(p.run(&["run", "workflow.toml", "--headless"]).status.code(), Some(0));
    let victim = p.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").expect("victim");
    // The next run's log name (job run 2, task run 2, attempt 1) already taken by a link.
    std::fs::DirBuilder::new().mode(0o700).create(p.state_dir().join("logs/2")).expect("mkdir");
    std::os::unix::fs::symlink(&victim, p.state_dir().join("logs/2/2.1.log")).expect("link");
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n", "the linked file is untouched");
    let log = p.state_dir().join("logs/2/2.1.log");
    assert!(std::fs::symlink_metadata(&log).expect("log").file_type().is_file(), "the link was replaced by the log");
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "hello from the task\n");
}

#[test]
fn linked_folders_and_files_in_the_state_dir_are_refused_at_start() {
    let p = Project::new(ONE_TASK);
    assert_eq!(p.run(&["run", "workflow.toml", "--headless"]).status.code(), Some(0));
    let elsewhere = p.path().join("elsewhere");
    std::fs::DirBuilder::new().mode(0o700).create(&elsewhere).expect("mkdir");
    for name in ["logs", "events", "token"] {
        let entry = p.state_dir().join(name);
        let _ = std::fs::remove_dir_all(&entry);
        std::os::unix::fs::symlink(&elsewhere, &entry).expect("link");
        let out = p.run(&["run", "workflow.toml", "--headless"]);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        let said = stderr(&out);
        assert!(said.contains(&format!("{name}: is a symbolic link")), "{said}");
        assert!(said.contains(&format!("fix: rm {}", entry.display())), "{said}");
        std::fs::remove_file(&entry).expect("unlink");
    }
    assert_eq!(std::fs::read_dir(&elsewhere).expect("dir").count(), 0, "nothing went through a link");
}

#[test]
fn a_journal_file_planted_as_a_link_is_not_written_through() {
    let p = Project::new(ONE_TASK);
    let victim = p.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").expect("victim");
    std::fs::DirBuilder::new().mode(0o700).recursive(true).create(p.state_dir().join("events")).expect("mkdir");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    std::os::unix::fs::symlink(&victim, p.state_dir().join(format!("events/events.{today}.jsonl"))).expect("link");
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(0), "the run itself goes on: {}", stderr(&out));
    assert!(
        stderr(&out).contains("event journal: cannot write"),
        "and says the journal is missing events: {}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n");
}

#[test]
fn everything_gaffer_creates_is_private_whatever_the_umask() {
    let p = Project::new(ONE_TASK);
    let gaffer = env!("CARGO_BIN_EXE_gaffer");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let run = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 000; exec '{gaffer}' run workflow.toml --headless"))
        .current_dir(p.path())
        .env("GAFFER_STATE_DIR", p.state_dir())
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let mut server = support::Server::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(format!("umask 000; exec '{gaffer}' serve workflow.toml --headless --listen 127.0.0.1:{port}"))
            .current_dir(p.path())
            .env("GAFFER_STATE_DIR", p.state_dir())
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    );
    let (socket, token) = (p.state_dir().join("gaffer.sock"), p.state_dir().join("token"));
    support::wait_for_socket(&socket);
    support::wait_until(Duration::from_secs(10), "the token", || token.exists());
    let mut checked = 0;
    let mut walk = vec![p.state_dir()];
    while let Some(dir) = walk.pop() {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            assert_eq!(meta.uid(), nix::unistd::Uid::effective().as_raw());
            if meta.is_dir() {
                walk.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "store, lock, socket, token, log, journal: {checked}");
    support::signal(server.child.id(), "TERM");
    let _ = server.child.wait();
}

// ---------------------------------------------------------------------------------------------
// 2. No silent data loss at open.

/// A state dir with one finished job run: its log and the bytes of its store.
fn one_run_done() -> (Project, Vec<u8>) {
    let p = Project::new(ONE_TASK);
    assert_eq!(p.run(&["run", "workflow.toml", "--headless"]).status.code(), Some(0));
    let log = std::fs::read(p.state_dir().join("logs/1/1.1.log")).expect("log");
    (p, log)
}

fn store_bytes(p: &Project) -> Vec<u8> {
    std::fs::read(p.state_dir().join("state.redb")).expect("store")
}

/// `run` refuses the store with `reason` in its message, exit 3, and leaves it byte for byte.
fn refused_untouched(p: &Project, reason: &str, log: &[u8]) {
    let before = store_bytes(p);
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains(reason) && said.contains("left as it is"), "{said}");
    assert_eq!(store_bytes(p), before, "the store is byte-identical afterwards");
    assert_eq!(std::fs::read(p.state_dir().join("logs/1/1.1.log")).expect("log"), log, "the old log is kept");
    let doctor = p.run(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(3), "{}", stdout(&doctor));
    assert!(
        stdout(&doctor).contains("FAIL  store") && stdout(&doctor).contains("put back a copy"),
        "{}",
        stdout(&doctor)
    );
    assert_eq!(store_bytes(p), before, "doctor changed nothing");
}

#[test]
fn an_empty_store_is_refused_not_replaced() {
    let (p, log) = one_run_done();
    std::fs::OpenOptions::new().write(true).truncate(true).open(p.state_dir().join("state.redb")).expect("empty it");
    refused_untouched(&p, "it is empty (0 bytes)", &log);
}

#[test]
fn a_truncated_store_is_refused_untouched() {
    let (p, log) = one_run_done();
    let len = store_bytes(&p).len() as u64;
    let file = std::fs::OpenOptions::new().write(true).open(p.state_dir().join("state.redb")).expect("open");
    file.set_len(len / 2).expect("truncate");
    refused_untouched(&p, "truncated", &log);
}

#[test]
fn a_store_with_flipped_bytes_is_refused_untouched() {
    let (p, log) = one_run_done();
    // Flip bytes inside a stored record: the workflow text kept with the run.
    let mut bytes = store_bytes(&p);
    let at = bytes.windows(20).position(|w| w == b"echo hello from the ").expect("the workflow text in the store");
    for b in &mut bytes[at..at + 8] {
        *b ^= 0xff;
    }
    std::fs::write(p.state_dir().join("state.redb"), &bytes).expect("write");
    refused_untouched(&p, "corrupted", &log);
}

#[test]
fn a_missing_store_beside_old_logs_is_not_started_afresh() {
    let (p, log) = one_run_done();
    std::fs::remove_file(p.state_dir().join("state.redb")).expect("rm");
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("logs of earlier runs") && stderr(&out).contains("logs.old"), "{}", stderr(&out));
    assert!(!p.state_dir().join("state.redb").exists(), "no new store");
    assert_eq!(std::fs::read(p.state_dir().join("logs/1/1.1.log")).expect("log"), log);
}

#[test]
fn doctor_says_all_good_on_a_healthy_state_dir_and_changes_nothing() {
    let (p, _) = one_run_done();
    let before = store_bytes(&p);
    let out = p.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let said = stdout(&out);
    assert!(said.contains("ok    store: every page verified") && said.contains("1 job_runs"), "{said}");
    assert!(said.contains("ok    event journal") && said.ends_with("all good\n"), "{said}");
    assert_eq!(store_bytes(&p), before);
}

// ---------------------------------------------------------------------------------------------
// 5. A full disk from task logs is seen.

/// `n` tasks printing `kb` KiB each.
fn chatty(n: usize, kb: usize) -> String {
    let mut text = String::from("[settings]\nworkers = 4\n");
    for i in 0..n {
        text.push_str(&format!(
            "[jobs.j.tasks.t{i}]\nrun = 'head -c {} /dev/zero | tr \"\\\\0\" x; echo'\n",
            kb * 1024
        ));
    }
    text
}

/// A tmpfs of `size` on `at`, or `None` (said) where mounting needs root.
fn small_disk(at: &Path, size: &str) -> Option<SmallDisk> {
    let disk = SmallDisk::mount(at, size);
    if disk.is_none() {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
    }
    disk
}

/// Every journal line is a whole JSON event.
fn journal_is_whole(p: &Project) -> usize {
    let mut events = 0;
    for entry in std::fs::read_dir(p.state_dir().join("events")).expect("events") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|x| x != "jsonl") {
            continue; // the tmpfs filler
        }
        let text = std::fs::read_to_string(path).expect("journal");
        assert!(text.is_empty() || text.ends_with('\n'), "the journal ends with a whole line");
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(event["event"].is_string(), "{line}");
            events += 1;
        }
    }
    events
}

#[test]
fn logs_filling_their_disk_are_seen_on_every_attempt_that_lost_output() {
    let p = Project::new(&chatty(40, 200));
    std::fs::DirBuilder::new().mode(0o700).create(p.state_dir()).expect("state dir");
    // Only the logs on the small disk: the store and the journal keep room, as in the report
    // ("run exited 0 with job succeeded, 38 of 40 logs empty").
    let Some(_disk) = small_disk(&p.state_dir().join("logs"), "1m") else { return };
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(0), "the tasks did succeed: {}", stderr(&out));
    let lines = stdout(&out) + &stderr(&out);
    let tasks = p.tasks();
    let mut incomplete = 0;
    for t in &tasks {
        let id = t["id"].as_u64().expect("id");
        let shown = p.json(&["show", &id.to_string(), "--json"]);
        let attempt = &shown["attempts"][0];
        let log = std::fs::read(p.state_dir().join(attempt["log"].as_str().expect("log"))).unwrap_or_default();
        let whole = log.len() == 200 * 1024 + 1;
        let warning = attempt["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str())
            .find(|w| w.starts_with("the log is incomplete"));
        match warning {
            Some(warning) => {
                incomplete += 1;
                assert!(warning.contains("No space left"), "{warning}");
                let text = stdout(&p.run(&["show", &id.to_string()]));
                assert!(text.contains(&format!("warning: {warning}")), "show says it: {text}");
                let said = format!(" #{id} j.");
                let line = lines.lines().find(|l| l.contains(&said) && l.contains("warning: the log is incomplete"));
                assert!(line.is_some(), "the run printed a warning line for #{id}: {lines}");
            }
            None => assert!(whole, "task run {id}: a log without a warning is whole ({} bytes)", log.len()),
        }
    }
    assert!(incomplete >= 30, "1 MiB holds at most 5 of 40 logs of 200 KiB: {incomplete} incomplete");
    let journal: Vec<serde_json::Value> = p.journal();
    let warned = journal
        .iter()
        .filter(|e| e["event"] == "task.warning")
        .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("the log is incomplete")))
        .count();
    assert_eq!(warned, incomplete, "the journal has a task.warning for each");
    journal_is_whole(&p);
}

#[test]
fn a_journal_that_fills_its_disk_keeps_whole_lines_and_goes_on_after_space_is_freed() {
    let p = Project::new(&chatty(60, 0));
    std::fs::DirBuilder::new().mode(0o700).create(p.state_dir()).expect("state dir");
    let Some(disk) = small_disk(&p.state_dir().join("events"), "256k") else { return };
    // Room for a few dozen events: the journal fills the disk mid-run, mid-line.
    disk.fill(12 * 1024);
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("event journal: cannot write") && said.contains("No space left"), "{said}");
    let first = journal_is_whole(&p);
    assert!(first > 0, "the journal kept the events that fitted");
    disk.free();
    let again = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let total = journal_is_whole(&p);
    assert!(total > first + 60 * 3, "the second run's events follow whole lines: {first} then {total}");
}

#[test]
fn logs_filling_the_whole_state_dir_stop_nothing_silently_and_a_restart_loses_nothing() {
    let p = Project::new(&chatty(40, 200));
    let Some(_disk) = small_disk(&p.state_dir(), "4m") else { return };
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    let said = stdout(&out) + &stderr(&out);
    match out.status.code() {
        // The store could not commit: gaffer stopped, with the reason (README, "full disk").
        Some(70) => assert!(said.contains("the disk is full") && said.contains("free some space"), "{said}"),
        // The store kept room: every attempt that lost output says so.
        Some(0) => assert!(said.contains("the log is incomplete"), "{said}"),
        other => panic!("exit {other:?}: {said}"),
    }
    journal_is_whole(&p);
    eprintln!("the first run exited {:?}", out.status.code());
    if out.status.code() == Some(70) {
        // Free space the way a person would: the logs that filled it. (After an exit 0 there
        // is nothing to resume: a second `run` would start a new job run, whose logs fill the
        // same small disk again.)
        std::fs::remove_dir_all(p.state_dir().join("logs/1")).expect("free the disk");
        let again = p.run(&["run", "workflow.toml", "--headless"]);
        assert!(again.status.code() == Some(0), "{}", stderr(&again));
        journal_is_whole(&p);
    }
    let doctor = p.run(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(0), "{}", stdout(&doctor));
    let tasks = p.tasks();
    assert!(tasks.iter().filter(|t| t["state"] == "succeeded").count() >= 40, "every task ran to the end");
}
