//! `for_each` and `compensate` (SPEC §2.2) on the real binary: fan-out over a JSON array output,
//! over lines, a literal list and a matrix, with and without a concurrency cap, per-item retry,
//! the dependent seeing the items' outputs; a saga undoing what a failed run did.

mod support;

use serde_json::Value;
use support::{Project, named, read, sorted_lines};

fn items_of<'a>(tasks: &'a [Value], task: &str) -> Vec<&'a Value> {
    let mut items: Vec<&Value> = tasks.iter().filter(|t| t["task"] == task && !t["item_index"].is_null()).collect();
    items.sort_by_key(|t| t["item_index"].as_u64());
    items
}

#[test]
fn fans_out_over_a_json_array_output_and_the_dependent_sees_the_outputs_in_item_order() {
    let p = Project::new(
        r#"
[jobs.j.tasks.list]
run = '''echo 'output xs=["c", "a", "b"]' >&3'''
[jobs.j.tasks.each]
needs = ["list"]
for_each = "{{ tasks.list.outputs.xs }}"
env = { ITEM = "{{ item }}", IDX = "{{ item_index }}" }
run = '''echo "$IDX $ITEM" >> seen; echo "output up=$ITEM$IDX" >&3'''
[jobs.j.tasks.sum]
needs = ["each"]
env = { ALL = "{{ tasks.each.outputs | map(attribute='up') | join(',') }}" }
run = 'echo "$ALL" > summary'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(sorted_lines(&p, "seen"), ["0 c", "1 a", "2 b"]);
    assert_eq!(read(&p, "summary").trim(), "c0,a1,b2", "the items' outputs, in item order");
    let tasks = p.tasks();
    let items = items_of(&tasks, "each");
    assert_eq!(items.len(), 3);
    assert_eq!(items[1]["item"], "a");
    assert!(items.iter().all(|t| t["state"] == "succeeded" && t["kind"] == "task"));
    let started = named(&events, "task.started");
    assert!(started.iter().any(|e| e["task"] == "each" && e["item_index"] == 2), "events carry item_index");
}

#[test]
fn fans_out_over_lines_a_literal_list_and_a_matrix() {
    let p = Project::new(
        r#"
[jobs.j.tasks.list]
run = '''printf 'output xs<<EOF\nx.txt\n\ny.txt\nEOF\n' >&3'''
[jobs.j.tasks.lines]
needs = ["list"]
for_each = "{{ tasks.list.outputs.xs }}"
args = ["sh", "-c", "echo line $0 >> seen", "{{ item }}"]
[jobs.j.tasks.literal]
for_each = ["p", 3, { k = "v" }]
stdin = "{{ item }}"
# One write per item: items run at once, and two writes could interleave.
run = 'printf "%s\n" "$(cat)" >> seen'
[jobs.j.tasks.matrix]
for_each = { os = ["linux", "mac"], py = ["3.11", "3.12"] }
env = { OS = "{{ item.os }}", PY = "{{ item.py }}" }
run = 'echo "m $OS $PY" >> seen'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(
        sorted_lines(&p, "seen"),
        [
            "3",
            "line x.txt",
            "line y.txt",
            "m linux 3.11",
            "m linux 3.12",
            "m mac 3.11",
            "m mac 3.12",
            "p",
            r#"{"k":"v"}"#,
        ]
    );
}

/// The most items running at the same time, from the `start end` nanosecond stamps they wrote.
fn max_concurrent(p: &Project) -> usize {
    let spans: Vec<(u128, u128)> = read(p, "spans")
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').expect("start end");
            (a.parse().expect("ns"), b.parse().expect("ns"))
        })
        .collect();
    spans.iter().map(|&(start, _)| spans.iter().filter(|&&(s, e)| s <= start && start < e).count()).max().unwrap_or(0)
}

const TIMED: &str = r#"
[jobs.j.tasks.fan]
for_each = [1, 2, 3, 4, 5, 6]
run = '''s=$(date +%s%N); sleep 0.4; echo "$s $(date +%s%N)" >> spans'''
"#;

#[test]
fn for_each_concurrency_caps_the_items_running_at_once() {
    let p = Project::new(&TIMED.replace("run =", "for_each_concurrency = 2\nrun ="));
    assert_eq!(p.run_json(&["--workers", "8"]).0, 0);
    assert_eq!(read(&p, "spans").lines().count(), 6);
    assert_eq!(max_concurrent(&p), 2, "two at a time, never more");

    let uncapped = Project::new(TIMED);
    assert_eq!(uncapped.run_json(&["--workers", "8"]).0, 0);
    assert!(max_concurrent(&uncapped) > 2, "without a cap the 8 workers are used");
}

#[test]
fn an_item_retries_on_its_own_and_an_empty_list_succeeds_at_once() {
    let p = Project::new(
        r#"
[jobs.j.tasks.fan]
for_each = ["ok", "flaky"]
retry = { max_attempts = 2, initial_interval = "100ms", jitter = 0.0 }
env = { ITEM = "{{ item }}" }
run = '''echo "$ITEM $GAFFER_ATTEMPT" >> tries; [ "$ITEM" = ok ] || [ "$GAFFER_ATTEMPT" = 2 ]'''
[jobs.j.tasks.none]
for_each = "{{ '' }}"
run = 'echo ran >> none-ran'
[jobs.j.tasks.after]
needs = ["fan", "none"]
run = 'true'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(sorted_lines(&p, "tries"), ["flaky 1", "flaky 2", "ok 1"], "only the failed item ran again");
    assert!(!p.path().join("none-ran").exists(), "an empty list runs nothing");
    assert_eq!(p.task("after")["state"], "succeeded");
}

#[test]
fn a_dead_item_fails_the_task_after_the_others_ended_and_a_render_error_is_permanent() {
    let p = Project::new(
        r#"
[jobs.j.tasks.fan]
for_each = ["a", "bad", "c"]
retry = { max_attempts = 1 }
env = { ITEM = "{{ item }}" }
run = '''echo "$ITEM" >> ran; [ "$ITEM" != bad ]'''
[jobs.j.tasks.after]
needs = ["fan"]
run = 'true'
[jobs.j.tasks.list]
run = 'echo "output xs=[1," >&3'
[jobs.j.tasks.broken]
needs = ["list"]
for_each = "{{ tasks.list.outputs.nope }}"
run = 'true'
"#,
    );
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(sorted_lines(&p, "ran"), ["a", "bad", "c"], "the other items still ran");
    let tasks = p.tasks();
    let node = tasks.iter().find(|t| t["task"] == "fan" && t["item_index"].is_null()).expect("the node");
    assert_eq!(node["state"], "dead");
    assert_eq!(p.task("after")["state"], "skipped");
    let broken = p.task("broken");
    assert_eq!((broken["state"].as_str(), broken["reason"].as_str()), (Some("dead"), Some("template_error")));
}

const SAGA: &str = r#"
[jobs.ship.tasks.create]
run = 'echo "output id=vm-7" >&3; echo create >> log'
compensate = 'echo "undo-create $GAFFER_COMPENSATES $GAFFER_OUTPUT_ID" >> log'
[jobs.ship.tasks.deploy]
needs = ["create"]
env = { TARGET = "prod" }
run = 'echo "output release.tag=r1" >&3; echo deploy >> log'
compensate = 'echo "undo-deploy $TARGET $GAFFER_COMPENSATES $GAFFER_OUTPUT_RELEASE_TAG" >> log'
[jobs.ship.tasks.announce]
needs = ["deploy"]
retry = { max_attempts = 1 }
run = 'echo announce >> log; exit 3'
"#;

#[test]
fn a_failed_run_undoes_its_steps_latest_first() {
    let p = Project::new(SAGA);
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "the job run stays failed");
    let tasks = p.tasks();
    let id = |name: &str| {
        tasks.iter().find(|t| t["task"] == name && t["kind"] == "task").expect("a run")["id"].as_u64().expect("id")
    };
    let (create, deploy) = (id("create"), id("deploy"));
    assert_eq!(
        read(&p, "log").lines().collect::<Vec<_>>(),
        [
            "create".to_string(),
            "deploy".into(),
            "announce".into(),
            format!("undo-deploy prod {deploy} r1"),
            format!("undo-create {create} vm-7"),
        ]
    );
    let compensations: Vec<&Value> = tasks.iter().filter(|t| t["kind"] == "compensation").collect();
    assert_eq!(compensations.len(), 2);
    assert!(compensations.iter().all(|t| t["state"] == "succeeded"));
    let undone: Vec<u64> = compensations.iter().map(|t| t["compensates"].as_u64().expect("compensates")).collect();
    assert!(undone.contains(&create) && undone.contains(&deploy));
    let comp_events: Vec<&Value> = events.iter().filter(|e| e["kind"] == "compensation").collect();
    assert!(comp_events.iter().any(|e| e["event"] == "task.succeeded"), "{comp_events:?}");
    let ended = named(&events, "job.failed");
    assert_eq!(ended.len(), 1);
    let last_comp = events.iter().rposition(|e| e["kind"] == "compensation").expect("compensation events");
    let failed_at = events.iter().position(|e| e["event"] == "job.failed").expect("job.failed");
    assert!(failed_at > last_comp, "the job run ends once the saga is done");
    // `show` names a compensation as every view does (`model::fanout::label`).
    let show = String::from_utf8_lossy(&p.run(&["show", "j1"]).stdout).into_owned();
    assert!(show.contains("deploy (undo)") && show.contains("create (undo)"), "{show}");
}

#[test]
fn a_compensation_that_fails_for_good_is_a_dead_letter_and_the_saga_goes_on() {
    let p = Project::new(&SAGA.replace(
        "compensate = 'echo \"undo-deploy",
        "retry = { max_attempts = 2, initial_interval = \"50ms\", jitter = 0.0 }\ncompensate = 'echo \"undo-deploy $GAFFER_ATTEMPT\" >> log; exit 1; echo \"",
    ));
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1);
    let log = read(&p, "log");
    assert!(log.contains("undo-deploy 1\nundo-deploy 2\nundo-create"), "retried by the task's policy, then on: {log}");
    let dead: Vec<Value> =
        p.tasks().into_iter().filter(|t| t["kind"] == "compensation" && t["state"] == "dead").collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["task"], "deploy");
}

#[test]
fn a_saga_cut_by_kill_9_goes_on_where_it_was_after_a_restart() {
    let p = Project::new(&SAGA.replace(
        "compensate = 'echo \"undo-deploy",
        "compensate = 'echo \"undo-deploy-try $GAFFER_ATTEMPT\" >> log; [ -e go ] || sleep 30; echo \"undo-deploy",
    ));
    let mut first = p.spawn_run(&[]);
    support::wait_until(std::time::Duration::from_secs(20), "the deploy compensation to start", || {
        std::fs::read_to_string(p.path().join("log")).is_ok_and(|l| l.contains("undo-deploy-try 1"))
    });
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    std::fs::write(p.path().join("go"), "").expect("go");
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "{events:?}");
    let log = read(&p, "log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(&lines[..4], ["create", "deploy", "announce", "undo-deploy-try 1"], "{log}");
    assert!(lines[4].starts_with("undo-deploy-try 2") && lines[5].starts_with("undo-deploy prod"), "{log}");
    assert!(lines[6].starts_with("undo-create") && lines.len() == 7, "each run undone once, in order: {log}");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "resumed, not run again");
    let compensations = p.tasks().into_iter().filter(|t| t["kind"] == "compensation").count();
    assert_eq!(compensations, 2);
}

#[test]
fn a_retried_dead_item_lets_the_fan_out_and_its_dependent_succeed() {
    let p = Project::new(
        r#"
[jobs.j.tasks.fan]
for_each = ["a", "b"]
retry = { max_attempts = 1 }
env = { ITEM = "{{ item }}" }
run = '''echo "$ITEM" >> ran; [ "$ITEM" = a ] || [ -e fixed ]'''
[jobs.j.tasks.after]
needs = ["fan"]
run = 'echo after >> ran'
"#,
    );
    assert_eq!(p.run_json(&[]).0, 1);
    std::fs::write(p.path().join("fixed"), "").expect("fix");
    let tasks = p.tasks();
    let dead = items_of(&tasks, "fan").into_iter().find(|t| t["state"] == "dead").expect("a dead item");
    assert_eq!(dead["item"], "b");
    let out = p.run(&["retry", &dead["id"].to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(sorted_lines(&p, "ran"), ["a", "after", "b", "b"], "only the dead item ran again, then the dependent");
    let node = p.tasks().into_iter().find(|t| t["task"] == "fan" && t["item_index"].is_null()).expect("the node");
    assert_eq!(node["state"], "succeeded");
}
