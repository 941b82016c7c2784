//! Faults from outside: the disk filling up under gaffer, and kill -9 campaigns (random kills
//! and restarts of a running gaffer, checked against the store and what the tasks did).

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
    // Everything serve says, read as it comes: the disk is filled only once it said it serves
    // (its start-up commit is durable then), so what fails is the submit, never the start.
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = server.child.stderr.take().expect("stderr");
    let reader = std::thread::spawn({
        let said = said.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut buf) {
                said.lock().expect("said").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let text = || said.lock().expect("said").clone();
    support::wait_until(std::time::Duration::from_secs(10), "serve to say it serves", || text().contains("serving"));
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
    reader.join().expect("stderr reader");
    let said = text();
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
    let (rounds, seed) = campaign_settings("needs");
    let mut rng = fastrand::Rng::with_seed(seed);
    let p = Project::new(&campaign_workflow(&mut rng));
    kill_9_rounds(&p, &mut rng, rounds, seed, 0);
    check_campaign(&p, seed);
}

/// `GAFFER_KILL9_ROUNDS` (default 6) and `GAFFER_KILL9_SEED` (default: the clock): how many
/// kills and which random choices; printed so a failure can be replayed.
fn campaign_settings(name: &str) -> (usize, u64) {
    let rounds: usize = std::env::var("GAFFER_KILL9_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(6);
    let seed: u64 = std::env::var("GAFFER_KILL9_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("kill -9 campaign ({name}): {rounds} rounds, GAFFER_KILL9_SEED={seed}");
    (rounds, seed)
}

/// Runs `gaffer run` and kills it (-9) after a random delay, `rounds` times or until the job
/// run ended, then lets a last `gaffer run` finish it; its exit code must be `last_code`.
fn kill_9_rounds(p: &Project, rng: &mut fastrand::Rng, rounds: usize, seed: u64, last_code: i32) {
    let ended = |p: &Project| {
        let out = p.run(&["jobs", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|j| j.as_array().is_some_and(|a| a.iter().any(|r| r["state"] != "running")))
    };
    for round in 0..rounds {
        if ended(p) {
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
    if !ended(p) {
        let (code, _) = p.run_json(&[]);
        assert_eq!(code, last_code, "the last run finishes everything (seed {seed})");
    }
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
        let last = check_attempts(p, t, &effects, seed);
        assert!(last["reason"].is_null(), "task run {}: the last attempt succeeded", t["id"]);
        ended_at
            .insert(t["task"].as_str().expect("task").to_string(), millis(last["ended_at"].as_str().expect("ended")));
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
    no_task_outlives_gaffer(p, seed);
}

/// Task run `t`'s attempts: numbered without gaps, all but the last interrupted (only kills
/// fail them), and every attempt that touched the world (a `start ID:N` line in `effects`) was
/// recorded before it ran. The last attempt, which ran to its end.
fn check_attempts(p: &Project, t: &serde_json::Value, effects: &str, seed: u64) -> serde_json::Value {
    let id = t["id"].as_u64().expect("id");
    let detail = p.json(&["show", &id.to_string(), "--json"]);
    let attempts = detail["attempts"].as_array().cloned().unwrap_or_default();
    let numbers: Vec<u64> = attempts.iter().filter_map(|a| a["n"].as_u64()).collect();
    let last = t["attempt"].as_u64().expect("attempt");
    assert_eq!(numbers, (1..=last).collect::<Vec<_>>(), "task run {id}: attempts without gaps (seed {seed})");
    for a in &attempts[..attempts.len() - 1] {
        assert_eq!(a["reason"], "interrupted", "task run {id}: only kills failed attempts (seed {seed}): {detail:#}");
    }
    for line in effects.lines().filter(|l| l.split_once(' ').is_some_and(|(_, r)| r.starts_with(&format!("{id}:")))) {
        let n: u64 = line.split(' ').nth(1).and_then(|r| r.rsplit(':').next()).and_then(|n| n.parse().ok()).expect("n");
        assert!(n <= last, "task run {id} ran attempt {n}, the store knows only {last} (seed {seed}): {line}");
    }
    assert!(
        effects.contains(&format!("end {id}:{last}")),
        "task run {id}: its last attempt ran to the end (seed {seed})"
    );
    attempts[attempts.len() - 1].clone()
}

/// No task process outlives the last gaffer.
fn no_task_outlives_gaffer(p: &Project, seed: u64) {
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

/// The kill -9 campaign over workflow control (SPEC §2.2): a loop ended by an output after 4
/// rounds (`max_iterations = 6`), a join (`join = "all"` over `spin`, which arrives every round,
/// and `side`), a `for_each` of 50 items (`for_each_concurrency = 3`), and a saga: `last`
/// fails for good, so every succeeded run of a task with `compensate` (`start`, the 4 rounds of
/// `spin`, the 50 items) is undone, latest first. After random kills and restarts the store must
/// show every task run ended, nothing lost, no (task, iteration, item) run twice except by an
/// interrupted attempt of the same task run, the join fired once, and each compensation once,
/// for exactly those runs, in reverse completion order. Same knobs as the campaign above.
#[test]
fn kill_9_campaign_over_loops_joins_fan_outs_and_sagas_loses_nothing() {
    let (rounds, seed) = campaign_settings("workflow control");
    let mut rng = fastrand::Rng::with_seed(seed);
    let p = Project::new(&control_campaign_workflow(&mut rng));
    kill_9_rounds(&p, &mut rng, rounds, seed, 1);
    check_control_campaign(&p, seed);
}

const ITEMS: u64 = 50;
const ROUNDS: u64 = 4;

fn control_campaign_workflow(rng: &mut fastrand::Rng) -> String {
    // Each command notes `start ID:ATTEMPT` and `end ID:ATTEMPT` around a random short sleep.
    let mut body = |extra: &str| {
        let sleep = format!("0.0{}", rng.u8(1..10));
        format!(
            "'echo \"start $GAFFER_TASK_RUN_ID:$GAFFER_ATTEMPT\" >> effects.log; sleep {sleep}; {extra}echo \"end $GAFFER_TASK_RUN_ID:$GAFFER_ATTEMPT\" >> effects.log'"
        )
    };
    let xs: Vec<String> = (0..ITEMS).map(|k| k.to_string()).collect();
    let xs = xs.join(",");
    format!(
        r#"[settings]
workers = 4
[defaults]
retry = {{ max_attempts = 100, initial_interval = "10ms", jitter = 0.0, poison_after_crashes = 0 }}

[jobs.w.tasks.start]
run = {start}
compensate = {start_undo}
next = [{{ on = "success", do = ["spin", "side"] }}]

[jobs.w.tasks.spin]
max_iterations = 6
env = {{ PREV = "{{{{ tasks.spin.outputs.round | default(0) }}}}" }}
run = {spin}
compensate = {spin_undo}
next = [
  {{ on = "success", when = "outputs.round | int < {ROUNDS}", do = ["spin"] }},
  {{ on = "success", do = ["gather"] }},
]

[jobs.w.tasks.side]
run = {side}
next = [{{ on = "success", do = ["gather"] }}]

[jobs.w.tasks.gather]
join = "all"
run = {gather}

[jobs.w.tasks.fan]
needs = ["gather"]
for_each = "{{{{ tasks.gather.outputs.xs }}}}"
for_each_concurrency = 3
run = {fan}
compensate = {fan_undo}

[jobs.w.tasks.last]
needs = ["fan"]
retry = {{ max_attempts = 100, non_retryable_exit_codes = [3], initial_interval = "10ms", jitter = 0.0, poison_after_crashes = 0 }}
run = {last}
"#,
        start = body(""),
        start_undo = body(""),
        spin = body("echo \"output round=$((PREV + 1))\" >&3; "),
        spin_undo = body(""),
        side = body(""),
        gather = body(&format!("echo \"output xs=[{xs}]\" >&3; ")),
        fan = body(""),
        fan_undo = body(""),
        last = body("").replace("effects.log'", "effects.log; exit 3'"),
    )
}

fn check_control_campaign(p: &Project, seed: u64) {
    use std::collections::{BTreeMap, BTreeSet};
    let tasks = p.tasks();
    let jobs = p.json(&["jobs", "--json"]);
    let runs: Vec<String> = tasks
        .iter()
        .map(|t| {
            let (id, task, it, item, kind) = (&t["id"], &t["task"], &t["iteration"], &t["item_index"], &t["kind"]);
            format!("{id} {task}#{it}[{item}] {kind} {} attempt {}", t["state"], t["attempt"])
        })
        .collect();
    let ctx = format!("seed {seed}; job runs: {jobs}; task runs:\n{}", runs.join("\n"));
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "resumed, never resubmitted ({ctx})");
    assert_eq!(jobs[0]["state"], "failed", "`last` fails for good ({ctx})");
    let terminal = ["succeeded", "failed", "dead", "skipped", "cancelled"];
    for t in &tasks {
        assert!(terminal.contains(&t["state"].as_str().unwrap_or("")), "not ended: {t:#} ({ctx})");
    }
    let (own, compensations): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) =
        tasks.iter().partition(|t| t["kind"] != "compensation"); // a task's own, items, a fan-out's group

    // One task run per (task, iteration, item): never a second one for the same place.
    let mut places: BTreeMap<(String, u64, Option<u64>), u64> = BTreeMap::new();
    for t in &own {
        let place = (
            t["task"].as_str().expect("task").to_string(),
            t["iteration"].as_u64().expect("it"),
            t["item_index"].as_u64(),
        );
        if let Some(other) = places.insert(place.clone(), t["id"].as_u64().expect("id")) {
            panic!("{place:?} has two task runs, {other} and {} ({ctx})", t["id"]);
        }
    }
    let count = |task: &str| own.iter().filter(|t| t["task"] == task && t["item_index"].is_null()).count();
    assert_eq!(count("start"), 1, "{ctx}");
    assert_eq!(count("side"), 1, "{ctx}");
    assert_eq!(count("gather"), 1, "the join fired once ({ctx})");
    assert_eq!(count("fan"), 1, "one fan-out node ({ctx})");
    assert_eq!(count("last"), 1, "{ctx}");
    let spins: BTreeSet<u64> =
        own.iter().filter(|t| t["task"] == "spin").map(|t| t["iteration"].as_u64().expect("it")).collect();
    assert_eq!(spins, (1..=ROUNDS).collect(), "the loop ran exactly its rounds ({ctx})");
    let items: BTreeSet<u64> = own.iter().filter_map(|t| t["item_index"].as_u64()).collect();
    assert_eq!(items, (0..ITEMS).collect(), "every item once ({ctx})");
    for t in &own {
        let wanted = if t["task"] == "last" { "dead" } else { "succeeded" };
        assert_eq!(t["state"], wanted, "{t:#} ({ctx})");
    }
    let rounds: BTreeSet<String> = own
        .iter()
        .filter(|t| t["task"] == "spin")
        .map(|t| t["outputs"]["round"].as_str().unwrap_or("").into())
        .collect();
    assert_eq!(rounds, (1..=ROUNDS).map(|r| r.to_string()).collect(), "each round saw the one before ({ctx})");

    // The join: `spin` arrived every round and `side` once, yet `gather` ran once.
    let journal = p.journal();
    let fired: Vec<&serde_json::Value> =
        journal.iter().filter(|e| e["event"] == "transition.fired" && e["to"] == "gather").collect();
    assert!(fired.len() >= 2, "both sources arrived at the join: {fired:?} ({ctx})");
    let gather_runs: BTreeSet<u64> = journal
        .iter()
        .filter(|e| e["event"] == "task.started" && e["task"] == "gather")
        .filter_map(|e| e["task_run"].as_u64())
        .collect();
    assert_eq!(gather_runs.len(), 1, "one task run of the join target ever started ({ctx})");

    // Attempts, and the world: every attempt was recorded before it ran.
    let effects = std::fs::read_to_string(p.path().join("effects.log")).unwrap_or_default();
    let known: BTreeSet<u64> = tasks.iter().filter_map(|t| t["id"].as_u64()).collect();
    for line in effects.lines() {
        let id: u64 = line.split([' ', ':']).nth(1).and_then(|n| n.parse().ok()).expect("a task run id");
        assert!(known.contains(&id), "task run {id} ran but the store does not know it ({ctx}): {line}");
    }
    let mut ended_at: BTreeMap<u64, u64> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t["attempt"].as_u64() > Some(0)) {
        let last = check_attempts(p, t, &effects, seed);
        let id = t["id"].as_u64().expect("id");
        if t["task"] != "last" || t["kind"] == "compensation" {
            assert!(last["reason"].is_null(), "task run {id}: the last attempt succeeded ({ctx})");
        }
        ended_at.insert(id, millis(last["ended_at"].as_str().expect("ended")));
    }

    // The saga: one compensation per succeeded run with `compensate`, each once, latest first.
    let undoable: BTreeSet<u64> = own
        .iter()
        .filter(|t| t["state"] == "succeeded" && ["start", "spin", "fan"].contains(&t["task"].as_str().unwrap_or("")))
        .filter(|t| t["task"] != "fan" || !t["item_index"].is_null())
        .filter_map(|t| t["id"].as_u64())
        .collect();
    assert_eq!(undoable.len() as u64, 1 + ROUNDS + ITEMS);
    let mut in_order: Vec<&serde_json::Value> = compensations.clone();
    in_order.sort_by_key(|t| t["id"].as_u64());
    let undone: Vec<u64> = in_order.iter().filter_map(|t| t["compensates"].as_u64()).collect();
    assert_eq!(undone.iter().copied().collect::<BTreeSet<u64>>(), undoable, "exactly the succeeded runs ({ctx})");
    assert_eq!(undone.len(), undoable.len(), "each once ({ctx})");
    assert!(in_order.iter().all(|t| t["state"] == "succeeded"), "{in_order:#?}");
    for pair in undone.windows(2) {
        assert!(
            ended_at[&pair[0]] >= ended_at[&pair[1]],
            "undone {} (ended {}) before {} (ended {}): not in reverse completion order ({ctx})",
            pair[0],
            ended_at[&pair[0]],
            pair[1],
            ended_at[&pair[1]]
        );
    }
    // One at a time: each compensation started after the one before ended.
    for pair in in_order.windows(2) {
        let ended = millis(pair[0]["ended_at"].as_str().expect("ended"));
        let started = millis(pair[1]["started_at"].as_str().expect("started"));
        assert!(started >= ended, "compensations overlap: {} and {} ({ctx})", pair[0]["id"], pair[1]["id"]);
    }
    let last_own_end = own.iter().filter_map(|t| t["ended_at"].as_str()).map(millis).max().expect("ends");
    let first_comp = in_order.first().and_then(|t| t["started_at"].as_str()).map(millis).expect("a compensation");
    assert!(first_comp >= last_own_end, "the saga starts once nothing else runs ({ctx})");
    no_task_outlives_gaffer(p, seed);
}
