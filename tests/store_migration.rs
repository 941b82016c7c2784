//! Store schema 2: a state dir written by gaffer before it (`tests/fixtures/state-v1-unfinished`,
//! made by the release at eb194eb: a finished run, a dead letter, and a run killed with
//! `kill -9` mid-task) opens with today's gaffer through the real binary, is migrated, and goes on;
//! read commands never migrate; a newer schema is refused untouched; and task runs as instances
//! read back through `--json` and the text views.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{Project, named};

/// A project holding the fixture's workflow file and its `state.redb`, private as gaffer wants.
fn project_from_fixture(name: &str) -> Project {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    // `state-v1` comes without its workflow file: any valid one opens it.
    let workflow = std::fs::read_to_string(fixture.join("workflow.toml"));
    let p = Project::new(&workflow.unwrap_or_else(|_| "[jobs.j.tasks.t]\nrun = 'true'\n".into()));
    std::fs::DirBuilder::new().mode(0o700).create(p.state_dir()).expect("state dir");
    let store = p.state_dir().join("state.redb");
    std::fs::copy(fixture.join("state.redb"), &store).expect("copy fixture");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

fn task_run(p: &Project, id: u64) -> Value {
    p.tasks().into_iter().find(|t| t["id"] == id).unwrap_or_else(|| panic!("task run {id}"))
}

#[test]
fn a_store_from_before_schema_2_resumes_its_unfinished_run_and_retries_its_dead_letter() {
    let p = project_from_fixture("state-v1-unfinished");
    // Read before any writer opened it (a reader migrates nothing).
    let finished_before = p.json(&["show", "1", "--json"]);
    let job_before = p.json(&["show", "j1", "--json"]);
    assert_eq!(finished_before["state"], "succeeded");
    assert_eq!(finished_before["outputs"]["greeting"], "hi");
    assert_eq!(finished_before["cost_usd"].to_string(), "0.0123");
    assert_eq!(task_run(&p, 2)["state"], "dead");
    assert_eq!(task_run(&p, 3)["state"], "running", "as the kill -9 left it");

    // The cause is fixed; the dead letter is retried while no instance runs.
    std::fs::write(p.path().join("fixed"), "").expect("fix");
    let out = p.run(&["retry", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Today's gaffer migrates the store, resumes j3 and takes the retry of j2.
    let out = p.run(&["run", "workflow.toml", "slow", "--json"]);
    let events = support::events(&out.stdout, &out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}\n{events:#?}", String::from_utf8_lossy(&out.stderr));
    let interrupted: Vec<_> = named(&events, "task.failed").into_iter().filter(|e| e["task_run"] == 3).collect();
    assert_eq!(interrupted.len(), 1, "{events:#?}");
    assert_eq!((interrupted[0]["reason"].as_str(), interrupted[0]["attempt"].as_u64()), (Some("interrupted"), Some(1)));

    let slow = task_run(&p, 3);
    assert_eq!((slow["state"].as_str(), slow["attempt"].as_u64()), (Some("succeeded"), Some(2)), "{slow:#}");
    assert_eq!(slow["outputs"]["woke"], "yes");
    let attempts = p.json(&["show", "3", "--json"])["attempts"].clone();
    let reasons: Vec<_> = attempts.as_array().expect("attempts").iter().map(|a| a["reason"].clone()).collect();
    assert_eq!(reasons, [Value::from("interrupted"), Value::Null], "{attempts:#}");
    let retried = task_run(&p, 2);
    assert_eq!((retried["state"].as_str(), retried["attempt"].as_u64()), (Some("succeeded"), Some(3)), "{retried:#}");
    let jobs = p.json(&["jobs", "--json"]);
    let states: Vec<_> = jobs.as_array().expect("jobs").iter().map(|j| (j["id"].clone(), j["state"].clone())).collect();
    assert_eq!(
        states,
        [(1.into(), "succeeded".into()), (2.into(), "succeeded".into()), (3.into(), "succeeded".into())],
        "nothing new was started: {jobs:#}"
    );

    // The finished run reads as it did, and every task run now carries its instance fields.
    assert_eq!(p.json(&["show", "1", "--json"]), finished_before);
    assert_eq!(p.json(&["show", "j1", "--json"]), job_before);
    for t in p.tasks() {
        assert_eq!((t["iteration"].as_u64(), &t["item_index"], &t["item"]), (Some(1), &Value::Null, &Value::Null));
        assert_eq!(t["kind"], "task");
        assert_eq!(t["reached_by"], Value::Null, "layout 1 knew no transitions");
    }
}

/// The schema a state dir records, read with redb directly (no gaffer in between).
fn schema_of(store: &Path) -> Option<u64> {
    use redb::{ReadableDatabase, TableDefinition};
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let db = redb::Database::builder().open_read_only(store).expect("open");
    let txn = db.begin_read().expect("read");
    txn.open_table(META).expect("meta").get("schema_version").expect("get").map(|v| v.value())
}

/// Read commands read a schema 1 dir as it is; the first `run` migrates it; a dir of a newer
/// gaffer is refused by every command and left byte for byte.
#[test]
fn read_commands_never_migrate_and_a_newer_schema_is_refused_untouched() {
    let p = project_from_fixture("state-v1");
    let store = p.state_dir().join("state.redb");
    assert_eq!(p.tasks().len(), 4);
    assert!(p.run(&["show", "2"]).status.success());
    assert_eq!(schema_of(&store), Some(1), "a read command migrated the store");
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(schema_of(&store), Some(2));

    {
        let db = redb::Database::create(&store).expect("open");
        let txn = db.begin_write().expect("txn");
        let meta = redb::TableDefinition::<&str, u64>::new("meta");
        txn.open_table(meta).expect("meta").insert("schema_version", 3).expect("insert");
        txn.commit().expect("commit");
    }
    let before = std::fs::read(&store).expect("read");
    for args in [&["run", "workflow.toml", "--json"][..], &["tasks"], &["status"]] {
        let out = p.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("schema version 3") && stderr.contains("this gaffer understands 1 to 2"), "{stderr}");
    }
    assert!(std::fs::read(&store).expect("read") == before, "a refused store was written to");
}

/// Task runs as instances (several per task: iterations, items, compensations) as the store
/// holds them reach `--json` with their fields and the text views with their labels.
#[test]
fn instances_read_back_with_their_fields_and_labels() {
    use gaffer::store::{Mutation, TaskRunKind, TaskRunRecord};
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    assert_eq!(p.run_json(&[]).0, 0);
    {
        let (store, closer, lock) = gaffer::store::open_writer(&p.state_dir()).expect("open");
        let first = store.reader().expect("reader").task_run(1).expect("read").expect("task run 1");
        let again = TaskRunRecord { id: 2, iteration: 2, ..first.clone() };
        let item = TaskRunRecord { id: 3, item_index: Some(1), item: Some(r#"{"os":"mac"}"#.into()), ..first.clone() };
        let undo = TaskRunRecord { id: 4, kind: TaskRunKind::Compensation, compensates: Some(1), ..first.clone() };
        let batch = [again, item, undo].into_iter().map(Mutation::TaskRun).collect();
        store.commit_blocking(batch).expect("commit");
        let instances = store.reader().expect("reader").instances_of(1, "t").expect("instances");
        assert_eq!(instances.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 4, 3, 2]);
        drop(store);
        closer.close(std::time::Duration::from_secs(10));
        drop(lock);
    }
    let tasks = p.tasks();
    let fields: Vec<_> = tasks
        .iter()
        .map(|t| (t["iteration"].clone(), t["item_index"].clone(), t["item"].clone(), t["kind"].clone()))
        .collect();
    let compensates: Vec<_> = tasks.iter().map(|t| t["compensates"].clone()).collect();
    assert_eq!(compensates, [Value::Null, Value::Null, Value::Null, 1.into()]);
    let null = Value::Null;
    assert_eq!(
        fields,
        [
            (1.into(), null.clone(), null.clone(), "task".into()),
            (2.into(), null.clone(), null.clone(), "task".into()),
            (1.into(), 1.into(), serde_json::json!({"os": "mac"}), "task".into()),
            (1.into(), null.clone(), null.clone(), "compensation".into()),
        ]
    );
    for args in [&["tasks"][..], &["show", "j1"]] {
        let out = p.run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(" j.t#2 ") && text.contains(" j.t[1] "), "{args:?}:\n{text}");
    }
}
