//! What a job run reaches (SPEC §2.2), on the real binary: a task nothing reaches gets no task
//! run (not in `tasks --json`, `show jN`, the events), views still name it *not reached*, a
//! join that can no longer be satisfied is recorded `skipped`, and a task that needs a looping
//! task runs once, after the loop's last iteration, with that iteration's outputs.

mod support;

use serde_json::Value;
use support::Project;

/// write → review, which loops through `revise` until it approves (the third round does);
/// `publish` needs `review`; `escalate` is reached only by a review that fails.
const REVIEW_THEN_PUBLISH: &str = r#"
[jobs.j.tasks.write]
run = 'echo output draft=1 >&3'
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.review]
args = ["sh", "-c", "n=$(cat rounds 2>/dev/null || echo 0); n=$((n+1)); echo $n > rounds; echo output round=$n >&3; if [ $n -ge 3 ]; then echo output verdict=approved >&3; else echo output verdict=again >&3; fi"]
max_iterations = 5
retry = { max_attempts = 1 }
next = [
  { on = "success", when = "outputs.verdict != 'approved'", do = ["revise"] },
  { on = "failure", do = ["escalate"] },
]
[jobs.j.tasks.revise]
run = 'true'
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.escalate]
run = 'touch escalated'
[jobs.j.tasks.publish]
needs = ["review"]
args = ["sh", "-c", "echo '{{ tasks.review.outputs.round }}' >> published"]
"#;

fn runs_of<'a>(tasks: &'a [Value], task: &str) -> Vec<&'a Value> {
    tasks.iter().filter(|t| t["task"] == task).collect()
}

#[test]
fn a_task_never_reached_has_no_task_run_and_show_names_it() {
    let p = Project::new(REVIEW_THEN_PUBLISH);
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let tasks = p.tasks();
    assert!(runs_of(&tasks, "escalate").is_empty(), "no task run of escalate: {tasks:#?}");
    assert!(events.iter().all(|e| e["task"] != "escalate"), "no event names escalate");
    assert!(p.journal().iter().all(|e| e["task"] != "escalate"), "nor does the journal");
    assert!(!p.path().join("escalated").exists());

    let show = p.json(&["show", "j1", "--json"]);
    assert_eq!(show["not_reached"], serde_json::json!(["escalate"]));
    assert!(show["tasks"].as_array().expect("tasks").iter().all(|t| t["task"] != "escalate"));
    let text = String::from_utf8_lossy(&p.run(&["show", "j1"]).stdout).into_owned();
    assert!(text.contains("not reached: escalate"), "{text}");
}

#[test]
fn a_task_that_needs_a_loop_runs_once_after_its_last_iteration_with_its_outputs() {
    let p = Project::new(REVIEW_THEN_PUBLISH);
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let tasks = p.tasks();
    assert_eq!(runs_of(&tasks, "review").len(), 3, "three rounds");
    let publish = runs_of(&tasks, "publish");
    assert_eq!(publish.len(), 1, "publish runs once: {publish:#?}");
    assert_eq!(publish[0]["state"], "succeeded");
    let published = std::fs::read_to_string(p.path().join("published")).expect("publish ran");
    assert_eq!(published, "3\n", "it saw the approved (last) round's outputs");
    let started = |task: &str| {
        events
            .iter()
            .filter(|e| e["event"] == "task.started" && e["task"] == task)
            .filter_map(|e| e["ts"].as_str())
            .max()
    };
    assert!(started("publish") > started("review"), "publish starts after the last review");
}

#[test]
fn a_task_that_needs_a_loop_is_skipped_when_the_last_iteration_fails() {
    // The second round fails: escalate handles it, publish follows review's last run: skipped.
    let p = Project::new(&REVIEW_THEN_PUBLISH.replace("if [ $n -ge 3 ]", "[ $n -ge 2 ] && exit 9; if false"));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "the failure is handled: {events:#?}");
    let tasks = p.tasks();
    assert_eq!(runs_of(&tasks, "publish")[0]["state"], "skipped");
    assert!(p.path().join("escalated").exists());
    assert!(!p.path().join("published").exists());
}

#[test]
fn a_join_that_can_no_longer_be_satisfied_is_recorded_and_an_unreached_one_is_not() {
    let p = Project::new(
        r#"
[jobs.j.tasks.a]
run = 'exit 1'
retry = { max_attempts = 1 }
next = [{ on = "success", do = ["sum", "other"] }]
[jobs.j.tasks.b]
run = 'true'
next = [{ on = "success", do = ["sum"] }]
[jobs.j.tasks.sum]
run = 'true'
join = "all"
[jobs.j.tasks.other]
run = 'true'
join = "all"
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "a is dead: {events:#?}");
    let sum = p.task("sum");
    assert_eq!((sum["state"].as_str(), sum["reason"].as_str()), (Some("skipped"), Some("join_unsatisfied")));
    assert!(p.tasks().iter().all(|t| t["task"] != "other"), "no source arrived at other: not reached");
    assert_eq!(p.json(&["show", "j1", "--json"])["not_reached"], serde_json::json!(["other"]));
}

#[test]
fn an_only_run_keeps_its_cut_and_says_nothing_is_unreached() {
    let p = Project::new(REVIEW_THEN_PUBLISH);
    assert_eq!(p.run_json(&[]).0, 0);
    let out = p.run(&["run", "workflow.toml", "j", "--only", "publish"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let show = p.json(&["show", "j2", "--json"]);
    assert_eq!(show["state"], "succeeded");
    let names: Vec<&str> = show["tasks"].as_array().expect("tasks").iter().filter_map(|t| t["task"].as_str()).collect();
    assert_eq!(names, ["review", "publish"], "the task and its borrowed need");
    assert_eq!(show["not_reached"], serde_json::json!([]), "an --only run's job is its cut");

    // Its task runs were made with their index in the whole job (review 1, publish 4) but its
    // job has two tasks: the run, the offline check of a retry and the retry find them by name.
    let out = p.run(&["retry", "j2", "--from", "publish"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let published = std::fs::read_to_string(p.path().join("published")).expect("publish ran");
    assert_eq!(published, "3\n3\n3\n", "j1, the --only run j2, and j2 again; each saw review#3's outputs");
}

#[test]
fn retry_from_a_task_that_needs_a_loop_runs_it_again_with_the_last_iteration() {
    let p = Project::new(REVIEW_THEN_PUBLISH);
    assert_eq!(p.run_json(&[]).0, 0);
    let out = p.run(&["retry", "j1", "--from", "publish"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "the same job run went again");
    let published = std::fs::read_to_string(p.path().join("published")).expect("publish ran");
    assert_eq!(published, "3\n3\n", "publish ran again, after review's last round");
    let tasks = p.tasks();
    assert_eq!(runs_of(&tasks, "review").len(), 3, "review was not run again");
    assert!(runs_of(&tasks, "escalate").is_empty(), "still not reached");
}

/// kill -9 while the loop runs (revise running): the restart goes on from the stored task runs,
/// makes no task run of what was not reached, and `publish` still runs once, after round 3.
#[test]
fn a_kill_mid_loop_resumes_and_publish_still_follows_the_last_round() {
    let p = Project::new(&REVIEW_THEN_PUBLISH.replace("run = 'true'\nnext", "run = 'sleep 0.5'\nnext"));
    let mut child = p.spawn_run(&[]);
    support::wait_until(std::time::Duration::from_secs(20), "revise to run", || {
        let out = p.run(&["tasks", "--json"]); // fails until the state dir exists
        let tasks: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        tasks.as_array().into_iter().flatten().any(|t| t["task"] == "revise" && t["state"] == "running")
    });
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    assert!(p.tasks().iter().all(|t| t["task"] != "publish" && t["task"] != "escalate"), "not reached yet");

    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "the resumed run finishes: {events:#?}");
    let tasks = p.tasks();
    assert_eq!(runs_of(&tasks, "review").len(), 3);
    assert_eq!(runs_of(&tasks, "publish").len(), 1);
    assert!(runs_of(&tasks, "escalate").is_empty());
    let published = std::fs::read_to_string(p.path().join("published")).expect("publish ran");
    assert_eq!(published, "3\n");
}
