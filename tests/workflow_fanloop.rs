//! `for_each` on a task reached more than once, and run again (SPEC §2.2), on the real binary:
//! each reaching of a fanned-out task fans out on its own (its own items, cap, outcome and
//! `{{ tasks.T.outputs }}`); `retry --from` a fanned-out task, or from what feeds its list,
//! fans it out again over the list rendered now; a retried dead item of a later iteration lets
//! that iteration go on.

mod support;

use serde_json::Value;
use support::{Project, read, sorted_lines};

/// The item task runs of `task`'s iteration `iteration`, in item order.
fn items_of(tasks: &[Value], task: &str, iteration: u64) -> Vec<Value> {
    let mut items: Vec<Value> = tasks
        .iter()
        .filter(|t| t["task"] == task && t["iteration"] == iteration && !t["item_index"].is_null())
        .cloned()
        .collect();
    items.sort_by_key(|t| t["item_index"].as_u64());
    items
}

/// `init` → `plan` (round N lists three items `rN-…`) → `fan` over that list (two at once) →
/// `check`, which writes what `fan`'s items said and sends `plan` round again until round 2.
const LOOP: &str = r#"
[jobs.j.tasks.init]
run = "true"
next = [{ on = "success", do = ["plan"] }]
[jobs.j.tasks.plan]
run = '''n=$(( $(cat round 2>/dev/null || echo 0) + 1 )); echo $n > round; echo "output xs=[\"r$n-a\", \"r$n-b\", \"r$n-c\"]" >&3'''
next = [{ on = "success", do = ["fan"] }]
[jobs.j.tasks.fan]
for_each = "{{ tasks.plan.outputs.xs }}"
for_each_concurrency = 2
env = { ITEM = "{{ item }}" }
run = '''echo "$ITEM" >> seen; echo "output up=$ITEM" >&3'''
next = [{ on = "success", do = ["check"] }]
[jobs.j.tasks.check]
env = { ALL = "{{ tasks.fan.outputs | map(attribute='up') | join(',') }}" }
run = '''echo "$ALL" >> summary; echo "output round=$(cat round)" >&3'''
next = [{ on = "success", when = "outputs.round != '2'", do = ["plan"] }]
"#;

#[test]
fn each_round_of_a_loop_fans_out_over_its_own_list() {
    let p = Project::new(LOOP);
    let out = p.run(&["run", "workflow.toml"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(sorted_lines(&p, "seen"), ["r1-a", "r1-b", "r1-c", "r2-a", "r2-b", "r2-c"]);
    assert_eq!(
        read(&p, "summary"),
        "r1-a,r1-b,r1-c\nr2-a,r2-b,r2-c\n",
        "each round's check sees its own round's items, in item order"
    );
    assert!(said.contains("fan#2[1]"), "the headless lines name an item of round 2 `fan#2[1]`:\n{said}");
    let tasks = p.tasks();
    for round in [1, 2] {
        let items = items_of(&tasks, "fan", round);
        let texts: Vec<&str> = items.iter().map(|t| t["item"].as_str().unwrap_or("?")).collect();
        let want: Vec<String> = ["a", "b", "c"].iter().map(|x| format!("r{round}-{x}")).collect();
        assert_eq!(texts, want, "round {round}'s items are its own");
        assert!(items.iter().all(|t| t["state"] == "succeeded"));
    }
}

#[test]
fn a_task_reached_by_two_transitions_fans_out_twice_each_within_its_own_cap() {
    let p = Project::new(
        r#"
[jobs.j.tasks.a]
run = "true"
next = [{ on = "success", do = ["fan"] }]
[jobs.j.tasks.b]
run = "true"
next = [{ on = "success", do = ["fan"] }]
[jobs.j.tasks.fan]
for_each = [1, 2, 3]
for_each_concurrency = 1
run = '''s=$(date +%s%N); sleep 0.2; echo "$GAFFER_TASK_RUN_ID $s $(date +%s%N)" >> spans'''
"#,
    );
    let (code, events) = p.run_json(&["--workers", "4"]);
    assert_eq!(code, 0, "{events:?}");
    let tasks = p.tasks();
    let iteration_of = |id: u64| {
        tasks.iter().find(|t| t["id"] == id).and_then(|t| t["iteration"].as_u64()).expect("a task run of the run")
    };
    let mut spans: Vec<(u64, u128, u128)> = read(&p, "spans")
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            (iteration_of(w[0].parse().expect("id")), w[1].parse().expect("ns"), w[2].parse().expect("ns"))
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 6, "three items for each arrival");
    for round in [1, 2] {
        let mine: Vec<&(u64, u128, u128)> = spans.iter().filter(|s| s.0 == round).collect();
        assert_eq!(mine.len(), 3, "arrival {round} has three items of its own");
        assert!(mine.windows(2).all(|w| w[0].2 <= w[1].1), "one item of arrival {round} at a time: {mine:?}");
    }
    let nodes: Vec<&Value> = tasks.iter().filter(|t| t["task"] == "fan" && t["item_index"].is_null()).collect();
    assert!(nodes.len() == 2 && nodes.iter().all(|n| n["state"] == "succeeded"), "{nodes:?}");
}

#[test]
fn a_retried_dead_item_of_a_later_round_lets_that_round_go_on() {
    // Round 2's item b fails until `fixed` exists; one attempt each.
    let p = Project::new(&LOOP.replace(
        "run = '''echo \"$ITEM\" >> seen;",
        "retry = { max_attempts = 1 }\nrun = '''echo \"$ITEM\" >> seen; [ \"$ITEM\" != r2-b ] || [ -e fixed ] || exit 3;",
    ));
    assert_eq!(p.run_json(&[]).0, 1);
    let tasks = p.tasks();
    let dead = items_of(&tasks, "fan", 2).into_iter().find(|t| t["state"] == "dead").expect("a dead item in round 2");
    assert_eq!(dead["item"], "r2-b");
    std::fs::write(p.path().join("fixed"), "").expect("fix");
    let out = p.run(&["retry", &dead["id"].to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    let seen = sorted_lines(&p, "seen");
    assert_eq!(seen, ["r1-a", "r1-b", "r1-c", "r2-a", "r2-b", "r2-b", "r2-c"], "only the dead item ran again");
    assert_eq!(read(&p, "summary"), "r1-a,r1-b,r1-c\nr2-a,r2-b,r2-c\n", "then round 2's check");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "the same job run went on");
}

/// `list` (its list from the file `xs`) → `fan` over it → `sum` of the items' outputs.
const FROM: &str = r#"
[jobs.j.tasks.list]
run = '''echo "output xs=$(cat xs)" >&3'''
[jobs.j.tasks.fan]
needs = ["list"]
for_each = "{{ tasks.list.outputs.xs }}"
retry = { max_attempts = 1 }
env = { ITEM = "{{ item }}" }
run = '''echo "$ITEM" >> ran; [ "$ITEM" != bad ] || exit 3; echo "output up=$ITEM" >&3'''
[jobs.j.tasks.sum]
needs = ["fan"]
env = { ALL = "{{ tasks.fan.outputs | map(attribute='up') | join(',') }}" }
run = 'echo "$ALL" >> summary'
"#;

#[test]
fn retry_from_what_feeds_a_fan_out_fans_it_out_again_over_the_new_list() {
    let p = Project::new(FROM);
    std::fs::write(p.path().join("xs"), r#"["a", "bad", "c"]"#).expect("xs");
    assert_eq!(p.run_json(&[]).0, 1, "item `bad` fails the fan-out");
    let before: Vec<u64> = items_of(&p.tasks(), "fan", 1).iter().map(|t| t["id"].as_u64().expect("id")).collect();
    std::fs::write(p.path().join("xs"), r#"["x", "y"]"#).expect("xs");
    let out = p.run(&["retry", "j1", "--from", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(read(&p, "summary"), "x,y\n", "the dependent sees the new items' outputs only");
    assert_eq!(sorted_lines(&p, "ran"), ["a", "bad", "c", "x", "y"]);
    let items = items_of(&p.tasks(), "fan", 1);
    let ids: Vec<u64> = items.iter().map(|t| t["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, before, "item k runs again in item k's task run");
    let got: Vec<(&str, &str, &str)> = items
        .iter()
        .map(|t| {
            (t["item"].as_str().unwrap_or("?"), t["state"].as_str().unwrap_or("?"), t["reason"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(got, [("x", "succeeded", ""), ("y", "succeeded", ""), ("c", "skipped", "not_in_list")]);
}

#[test]
fn retry_from_a_fanned_out_task_runs_its_items_and_its_dependents_again() {
    let p = Project::new(FROM);
    std::fs::write(p.path().join("xs"), r#"["a", "b"]"#).expect("xs");
    assert_eq!(p.run_json(&[]).0, 0);
    let out = p.run(&["retry", "j1", "--from", "fan"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(sorted_lines(&p, "ran"), ["a", "a", "b", "b"], "each item ran again, `list` did not");
    assert_eq!(read(&p, "summary"), "a,b\na,b\n");
    let items = items_of(&p.tasks(), "fan", 1);
    assert!(items.iter().all(|t| t["attempt"] == 2 && t["state"] == "succeeded"), "{items:?}");
}

#[test]
fn a_fanned_out_task_shows_as_the_group_of_its_items_not_as_a_task_run_of_its_own() {
    let p = Project::new(
        r#"
[jobs.j.tasks.fan]
for_each = ["a", "b"]
run = 'true'
[jobs.j.tasks.none]
for_each = []
run = 'echo never >> ran'
[jobs.j.tasks.after]
needs = ["none"]
run = 'true'
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    let tasks = p.tasks();
    let kinds = |task: &str| -> Vec<(String, String)> {
        tasks
            .iter()
            .filter(|t| t["task"] == task)
            .map(|t| (t["kind"].as_str().unwrap_or("?").to_string(), t["state"].as_str().unwrap_or("?").to_string()))
            .collect()
    };
    let group = ("fanout".to_string(), "succeeded".to_string());
    let item = ("task".to_string(), "succeeded".to_string());
    assert_eq!(kinds("fan"), [group.clone(), item.clone(), item]);
    assert_eq!(kinds("none"), [group], "an empty list succeeds at once, its group visible");
    assert!(!p.path().join("ran").exists());
    let ended: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "task.succeeded" && e["item_index"].is_null() && e["task"] != "after")
        .collect();
    assert!(ended.len() == 2 && ended.iter().all(|e| e["kind"] == "fanout"), "a group's events say so: {ended:?}");
    let status = p.json(&["status", "--json"]);
    assert_eq!(status["totals"]["succeeded"], 3, "two items and `after`; groups are not task runs: {status}");
    let table = String::from_utf8_lossy(&p.run(&["show", "j1"]).stdout).into_owned();
    let fan = table.lines().find(|l| l.contains(" j.fan ")).unwrap_or_default();
    assert!(fan.contains("items") && !fan.contains("0/3"), "the group has no attempts of its own: {table}");
    let group = tasks.iter().find(|t| t["task"] == "fan" && t["kind"] == "fanout").expect("fan's group");
    let detail = String::from_utf8_lossy(&p.run(&["show", &group["id"].to_string()]).stdout).into_owned();
    assert!(detail.contains("a fan-out: the group of its items") && !detail.contains("attempts:"), "{detail}");
}

#[test]
fn the_dead_letters_of_a_fan_out_are_its_dead_items_and_retrying_them_finishes_it() {
    let p = Project::new(
        r#"
[jobs.j.tasks.fan]
for_each = ["a", "b", "c"]
retry = { max_attempts = 1 }
env = { ITEM = "{{ item }}" }
run = '''echo "$ITEM" >> ran; [ "$ITEM" = a ] || [ -e fixed ]'''
[jobs.j.tasks.after]
needs = ["fan"]
run = 'echo after >> ran'
"#,
    );
    assert_eq!(p.run_json(&[]).0, 1);
    let dead = p.json(&["dlq", "list", "--json"]);
    let items: Vec<(&str, u64)> = dead
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t["kind"].as_str().unwrap_or("?"), t["item_index"].as_u64().unwrap_or(99)))
        .collect();
    assert_eq!(items, [("task", 1), ("task", 2)], "the items, not their group: {dead}");
    std::fs::write(p.path().join("fixed"), "").expect("fix");
    let out = p.run(&["dlq", "retry", "--all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(sorted_lines(&p, "ran"), ["a", "after", "b", "b", "c", "c"]);
}

#[test]
fn retry_from_a_fanned_out_task_a_transition_reached_runs_it_and_what_its_transitions_reach() {
    let p = Project::new(LOOP);
    assert_eq!(p.run_json(&[]).0, 0);
    let out = p.run(&["retry", "j1", "--from", "fan"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:?}");
    // Its list is rendered anew from `plan` as it is now (round 2's); then `check` runs again.
    let seen = sorted_lines(&p, "seen");
    assert_eq!(seen, ["r1-a", "r1-b", "r1-c", "r2-a", "r2-a", "r2-b", "r2-b", "r2-c", "r2-c"]);
    assert_eq!(read(&p, "summary"), "r1-a,r1-b,r1-c\nr2-a,r2-b,r2-c\nr2-a,r2-b,r2-c\n");
    let items = items_of(&p.tasks(), "fan", 1);
    assert!(items.iter().all(|t| t["attempt"] == 2 && t["item"].as_str().is_some_and(|i| i.starts_with("r2-"))));
}
