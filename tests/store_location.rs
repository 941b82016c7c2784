//! `--store` / `GAFFER_STORE` through the real binary: a `gaffer serve` on a private PostgreSQL
//! (`gaffer::store::pg::testing`; skipped, and saying so, without PostgreSQL installed), and
//! every read command from another state dir — no node there — seeing its run in the database;
//! commands that need an engine refused there with what to do; a bad URL, and a database at
//! another schema, refused with the reason.

mod support;

use std::path::Path;
use std::time::Duration;

use gaffer::store::pg::testing::TestDb;
use serde_json::Value;
use support::{Project, Server, wait_for_socket, wait_until};

fn quickstart() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.toml").display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `gaffer ARGS --store URL` in `p`'s state dir: exit code, stdout, stderr.
fn with_store(p: &Project, url: &str, args: &[&str]) -> (i32, String, String) {
    let out = p.gaffer(args).args(["--store", url]).stdin(std::process::Stdio::null()).output().expect("gaffer");
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn json_with_store(p: &Project, url: &str, args: &[&str]) -> Value {
    let (code, out, err) = with_store(p, url, args);
    assert_eq!(code, 0, "gaffer {args:?} --store: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn a_serve_on_postgres_is_read_by_every_command_from_another_state_dir() {
    let Some(db) = TestDb::get() else { return };
    let url = db.postgres_url();
    let node = Project::new("");
    let server = Server::spawn(
        node.gaffer(&["serve", &quickstart(), "--headless", "--store", &url])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_for_socket(&node.state_dir().join("gaffer.sock"));
    let (code, out, err) = with_store(&node, &url, &["submit", "report"]);
    assert_eq!(code, 0, "submit through the node's socket: {err}");
    let id: u64 = out.trim().trim_start_matches('j').parse().unwrap_or_else(|_| panic!("a job run id: {out}"));
    let run = format!("j{id}");

    // Another state dir, where no node runs and nothing was ever written.
    let elsewhere = Project::new("");
    wait_until(Duration::from_secs(60), "the run succeeds, read from the database", || {
        let jobs = json_with_store(&elsewhere, &url, &["jobs", "--json"]);
        jobs.as_array().is_some_and(|j| j.iter().any(|j| j["id"] == id && j["state"] == "succeeded"))
    });
    assert!(!elsewhere.state_dir().exists(), "a reader of the database writes nothing in its own state dir");
    let tasks = json_with_store(&elsewhere, &url, &["tasks", "--json", "--run", &run]);
    let names: Vec<&str> = tasks.as_array().expect("a list").iter().filter_map(|t| t["task"].as_str()).collect();
    assert_eq!(names.len(), 4, "{tasks}");
    for task in ["fetch", "flaky", "analyze", "deliver"] {
        assert!(names.contains(&task), "{task} in {names:?}");
    }
    let shown = json_with_store(&elsewhere, &url, &["show", &run, "--json"]);
    assert_eq!(shown["state"], "succeeded", "{shown}");
    let analyze = tasks.as_array().expect("a list").iter().find(|t| t["task"] == "analyze").expect("analyze");
    let analyze_id = analyze["id"].as_u64().expect("an id").to_string();
    let detail = json_with_store(&elsewhere, &url, &["show", &analyze_id, "--json"]);
    assert_eq!(detail["attempts"].as_array().map(Vec::len), Some(1), "{detail}");
    let status = json_with_store(&elsewhere, &url, &["status", "--json"]);
    assert_eq!(status["totals"]["succeeded"], 4, "{status}");
    assert!(status["instance"]["pid"].is_null(), "no node runs on that state dir: {status}");
    let cost = json_with_store(&elsewhere, &url, &["cost", "--json", "--by", "model"]);
    assert!(cost["total_usd"].as_f64().is_some_and(|usd| usd > 0.0), "the fake agent's spending: {cost}");
    let (code, out, err) = with_store(&elsewhere, &url, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("instance: none on this state dir; read from postgres://"), "{out}");
    let (code, _, err) = with_store(&elsewhere, &url, &["logs", &run]);
    assert_eq!(code, 0, "logs of a run read from the database: {err}");

    // GAFFER_STORE says the same as --store.
    let out = elsewhere.gaffer(&["jobs", "--json"]).env("GAFFER_STORE", &url).output().expect("gaffer");
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stderr)));
    assert!(jobs.as_array().is_some_and(|j| j.iter().any(|j| j["id"] == id)), "{jobs}");
    // Without either, that state dir's own store: nothing ran there.
    let out = elsewhere.run(&["jobs", "--json"]);
    assert!(!text(&out.stdout).contains("\"report\""), "{}", text(&out.stdout));

    // Commands that need an engine say what they need; nothing goes to that state dir's inbox.
    for args in [vec!["retry", &run], vec!["cancel", &run], vec!["submit", "report"], vec!["pause", "llm"]] {
        let (code, _, err) = with_store(&elsewhere, &url, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("needs a running gaffer node") && err.contains("--store postgres://"), "{args:?}: {err}");
    }
    assert!(!elsewhere.state_dir().join("inbox").exists());

    // Through the node's socket, the node answers from the database too (its API reads it).
    let status = json_with_store(&node, &url, &["status", "--json"]);
    assert!(status["instance"]["pid"].is_u64() && status["totals"]["succeeded"] == 4, "{status}");
    let through_node = json_with_store(&node, &url, &["tasks", "--json", "--run", &run]);
    assert_eq!(through_node, tasks, "the same answer either way");
    // Through the node's socket the same command works.
    let (code, out, err) = with_store(&node, &url, &["retry", &run]);
    assert_ne!(code, 2, "answered by the node: {out}{err}");

    // The node stopped: its own state dir reads the database directly, its local logs included.
    drop(server);
    let (code, out, err) = with_store(&node, &url, &["logs", &analyze_id]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty(), "the attempt's log, from the node's state dir");
    let (code, out, _) = with_store(&node, &url, &["show", &run]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("job run {run} of `report`")), "{out}");
    let (code, out, _) = with_store(&node, &url, &["doctor"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("every record decodes: 1 job runs, 4 task runs"), "the database checked: {out}");
}

#[test]
fn a_store_that_is_not_a_postgres_url_is_a_usage_error_without_its_password() {
    let p = Project::new("");
    for url in ["mysql://me:hunter2@db/x", "postgres://me:hunter2@db:notaport/x", "state.redb"] {
        let (code, _, err) = with_store(&p, url, &["status"]);
        assert_eq!(code, 2, "{url}: {err}");
        assert!(err.contains("--store `"), "{url}: {err}");
        assert!(!err.contains("hunter2"), "the password is never shown: {err}");
    }
    // A good URL of a database that does not answer: the store's error (exit 3), with the cause.
    let (code, _, err) = with_store(&p, "postgres://me:hunter2@127.0.0.1:1/x", &["status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("store postgres://me:***@127.0.0.1:1/x: postgres: error connecting"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let out = p.gaffer(&["jobs"]).env("GAFFER_STORE", "redis://db").output().expect("gaffer");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not a store gaffer knows"), "{}", text(&out.stderr));
    // `GAFFER_STORE=` (set, empty) is the state dir's own store, as unset.
    let out = p.gaffer(&["jobs"]).env("GAFFER_STORE", "").output().expect("gaffer");
    assert_ne!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!p.state_dir().exists(), "nothing was made");
}

#[test]
fn a_reader_refuses_a_database_at_another_schema_and_never_migrates_it() {
    let Some(db) = TestDb::get() else { return };
    let url = db.postgres_url();
    let p = Project::new("");
    let table = "SELECT to_regclass('gaffer_schema') IS NULL";

    // A database no `gaffer serve` has set up: refused, and left as it is.
    let (code, _, err) = with_store(&p, &url, &["status"]);
    assert_eq!(code, 3, "{err}");
    let expects = format!("at gaffer schema 0, this gaffer expects {}", gaffer::store::pg::SCHEMA_VERSION);
    assert!(err.contains(&expects) && err.contains("start a `gaffer serve --store …`"), "{err}");
    assert_eq!(db.psql(table).trim(), "t", "a reader created nothing");

    // One migration behind (set up by this gaffer, then its last migration's record taken away).
    drop(gaffer::store::pg::PgBackend::open(&db.url, Default::default()).expect("a writer migrates"));
    db.psql("DELETE FROM gaffer_schema WHERE version = (SELECT max(version) FROM gaffer_schema)");
    let behind = gaffer::store::pg::SCHEMA_VERSION - 1;
    for args in [vec!["jobs"], vec!["tasks"], vec!["show", "j1"], vec!["cost"]] {
        let (code, _, err) = with_store(&p, &url, &args);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains(&format!("at gaffer schema {behind}, this gaffer expects")), "{args:?}: {err}");
    }
    let recorded = db.psql("SELECT coalesce(max(version), 0) FROM gaffer_schema");
    assert_eq!(recorded.trim(), behind.to_string(), "no reader applied the migration");

    // Newer than this gaffer: refused as ever.
    db.psql(&format!("INSERT INTO gaffer_schema (version) VALUES ({})", gaffer::store::pg::SCHEMA_VERSION + 5));
    let (code, _, err) = with_store(&p, &url, &["status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("this gaffer understands up to"), "{err}");
}
