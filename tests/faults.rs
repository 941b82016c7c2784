//! Faults from outside: the disk filling up under gaffer. (kill -9 recovery is in `cli.rs`.)

mod support;

use support::{Project, SmallDisk};

/// Fills the state dir's disk to all but `keep` bytes, runs 300 tasks, then frees the disk and
/// runs again. `stored_before_full`: `keep` is enough to store the job run before the disk fills.
fn full_disk_then_restart(keep: u64, stored_before_full: bool) {
    let mut text = String::from("[settings]\nworkers = 2\n");
    for i in 0..300 {
        text.push_str(&format!("[jobs.many.tasks.t{i}]\nrun = 'echo line {i}'\n"));
    }
    let p = Project::new(&text);
    let Some(disk) = SmallDisk::mount(&p.state_dir(), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    disk.fill(keep);

    let out = p.run(&["run", "workflow.toml", "--headless"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(stderr.contains("the disk is full") && stderr.contains("free some space"), "{stderr}");
    assert!(!stderr.contains("Previous I/O error"), "the first cause is told, not redb's echo: {stderr}");

    disk.free();
    let again = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
    let resumed = String::from_utf8_lossy(&again.stderr).contains("resuming it");
    assert_eq!(resumed, stored_before_full, "the run stored before the disk filled up is resumed, not doubled");
    let tasks = p.tasks();
    assert_eq!(tasks.len(), 300, "every task run is there");
    assert!(tasks.iter().all(|t| t["state"] == "succeeded"), "and all of them ran");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "one job run, resumed or new");
}

#[test]
fn a_disk_full_before_the_run_is_stored_stops_gaffer_with_the_reason() {
    // Less than the job run's first commit (300 task runs, each written once), more than the
    // definition's: the run is never stored.
    full_disk_then_restart(70 * 1024, false);
}

#[test]
fn a_disk_filling_up_mid_run_stops_gaffer_and_a_restart_loses_nothing() {
    full_disk_then_restart(170 * 1024, true);
}

#[test]
fn a_server_whose_disk_fills_up_exits_70_with_the_reason() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'echo hi'\n");
    let Some(disk) = SmallDisk::mount(&p.state_dir(), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mut server = support::Server::spawn(
        p.gaffer(&["serve", "workflow.toml", "--headless"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let socket = p.state_dir().join("gaffer.sock");
    support::wait_for_socket(&socket);
    disk.fill(0);
    let submit = p.run(&["submit", "j"]);
    assert_ne!(submit.status.code(), Some(0), "a run that cannot be stored is refused");
    assert!(String::from_utf8_lossy(&submit.stderr).contains("the disk is full"), "{submit:?}");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("poll") {
            break status;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "serve kept running on a broken store");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(70));
    let mut said = String::new();
    std::io::Read::read_to_string(&mut server.child.stderr.take().expect("stderr"), &mut said).expect("stderr");
    assert!(said.contains("the disk is full"), "{said}");
}

/// The promise in one test: kill -9 gaffer at random moments, again and again, then let it
/// finish. Every task run must end succeeded, in its one job run; no task may have run in an
/// attempt the store did not know about (`running` + attempt number are durable before the
/// spawn); a task never starts before what it needs succeeded; attempts are numbered without
/// gaps, only the last one succeeded, the others were interrupted; no task process outlives
/// the last gaffer. `GAFFER_KILL9_ROUNDS` (default 6) and `GAFFER_KILL9_SEED` pick the
/// campaign; `scripts/kill9-campaign.sh` runs a long one.
#[test]
fn kill_9_campaign_loses_nothing_and_never_runs_an_unrecorded_attempt() {
    let rounds: usize = std::env::var("GAFFER_KILL9_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(6);
    let seed: u64 = std::env::var("GAFFER_KILL9_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("kill -9 campaign: {rounds} rounds, GAFFER_KILL9_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let p = Project::new(&campaign_workflow(&mut rng));
    let finished = |p: &Project| {
        let out = p.run(&["jobs", "--json", "--state", "succeeded"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|j| j.as_array().is_some_and(|a| !a.is_empty()))
    };
    for round in 0..rounds {
        if finished(&p) {
            // `gaffer run` would start a second run of a finished job: the campaign is over.
            eprintln!("the job run finished before round {round}");
            break;
        }
        let mut child = p.spawn_run(&[]);
        // From "still opening the store" to "deep in the run".
        let delay = if rng.bool() { rng.u64(0..60) } else { rng.u64(60..900) };
        std::thread::sleep(std::time::Duration::from_millis(delay));
        child.kill().expect("kill -9");
        let out = child.wait_with_output().expect("output");
        let said = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "round {round}: killed after {delay} ms{}",
            said.lines().last().map(|l| format!(": {l}")).unwrap_or_default()
        );
    }
    if !finished(&p) {
        let (code, _) = p.run_json(&[]);
        assert_eq!(code, 0, "the last run finishes everything (seed {seed})");
    }
    check_campaign(&p, seed);
}

const CAMPAIGN_TASKS: usize = 24;

/// Tasks in layers (each needs up to two of the layer before), each appending
/// `task_run:attempt` to effects.log when it starts and when it ends, with a random duration.
fn campaign_workflow(rng: &mut fastrand::Rng) -> String {
    let mut text = String::from(
        // These kills are not the tasks' doing: no task run is quarantined as a poison pill.
        "[settings]\nworkers = 3\n[defaults]\nretry = { max_attempts = 100, initial_interval = \"10ms\", jitter = 0.0, poison_after_crashes = 0 }\n",
    );
    for i in 0..CAMPAIGN_TASKS {
        let sleep = format!("0.{:02}", rng.u8(5..60));
        text.push_str(&format!(
            "[jobs.c.tasks.t{i}]\nrun = 'echo \"start $GAFFER_TASK_RUN_ID:$GAFFER_ATTEMPT\" >> effects.log; sleep {sleep}; echo \"end $GAFFER_TASK_RUN_ID:$GAFFER_ATTEMPT\" >> effects.log'\n"
        ));
        if i >= 6 {
            let layer_start = (i / 6 - 1) * 6;
            let needs: std::collections::BTreeSet<usize> =
                (0..rng.usize(1..=2)).map(|_| layer_start + rng.usize(0..6)).collect();
            let needs: Vec<String> = needs.iter().map(|n| format!("\"t{n}\"")).collect();
            text.push_str(&format!("needs = [{}]\n", needs.join(", ")));
        }
    }
    text
}

fn check_campaign(p: &Project, seed: u64) {
    let tasks = p.tasks();
    let jobs = p.json(&["jobs", "--json"]);
    assert_eq!(tasks.len(), CAMPAIGN_TASKS, "no task run lost, none added (seed {seed}); job runs: {jobs:#}");
    assert!(tasks.iter().all(|t| t["state"] == "succeeded"), "seed {seed}: {tasks:#?}");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "resumed, never resubmitted");

    let effects = std::fs::read_to_string(p.path().join("effects.log")).unwrap_or_default();
    let mut ended_at: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for t in &tasks {
        let id = t["id"].as_u64().expect("id");
        let detail = p.json(&["show", &id.to_string(), "--json"]);
        let attempts = detail["attempts"].as_array().cloned().unwrap_or_default();
        let numbers: Vec<u64> = attempts.iter().filter_map(|a| a["n"].as_u64()).collect();
        let last = t["attempt"].as_u64().expect("attempt");
        assert_eq!(numbers, (1..=last).collect::<Vec<_>>(), "task run {id}: attempts without gaps (seed {seed})");
        for a in &attempts[..attempts.len() - 1] {
            assert_eq!(a["reason"], "interrupted", "task run {id}: only kills failed attempts (seed {seed})");
        }
        assert!(attempts[attempts.len() - 1]["reason"].is_null(), "task run {id}: the last attempt succeeded");
        // Every attempt that touched the world was recorded before it ran.
        for line in effects.lines().filter(|l| l.split_once(' ').is_some_and(|(_, r)| r.starts_with(&format!("{id}:"))))
        {
            let n: u64 = line.rsplit(':').next().and_then(|n| n.parse().ok()).expect("attempt number");
            assert!(n <= last, "task run {id} ran attempt {n}, the store knows only {last} (seed {seed}): {line}");
        }
        assert!(effects.contains(&format!("end {id}:{last}\n")), "task run {id}: its succeeded attempt ran to the end");
        let ended = attempts[attempts.len() - 1]["ended_at"].as_str().expect("ended").to_string();
        ended_at.insert(t["task"].as_str().expect("task").to_string(), millis(&ended));
    }
    // Needs: a task's first attempt starts only after each need's successful attempt ended.
    let workflow = std::fs::read_to_string(p.path().join("workflow.toml")).expect("workflow");
    let doc: toml::Table = workflow.parse().expect("toml");
    let defs = doc["jobs"]["c"]["tasks"].as_table().expect("tasks");
    for t in &tasks {
        let name = t["task"].as_str().expect("task");
        let Some(needs) = defs[name].get("needs").and_then(|n| n.as_array()) else { continue };
        let started = millis(t["started_at"].as_str().expect("started"));
        for need in needs.iter().filter_map(|n| n.as_str()) {
            assert!(started >= ended_at[need], "{name} started before {need} succeeded (seed {seed})");
        }
    }
    // No task process outlives gaffer.
    let marker = format!("GAFFER_STATE_DIR={}", p.state_dir().display());
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let alive = environ.split(|b| *b == 0).any(|var| var == marker.as_bytes());
        assert!(!alive, "a task process outlived gaffer: {:?} (seed {seed})", entry.path());
    }
}

/// RFC 3339 UTC with milliseconds → ms since the epoch.
fn millis(text: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis() as u64).expect("rfc3339")
}
