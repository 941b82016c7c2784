//! What people see of events and transitions (issue #10 item 4): `show` of a task run says
//! which transition reached it, as the TUI's detail does, through the real binary.

mod support;

use support::Project;

const LOOP: &str = r#"
[jobs.review]
[jobs.review.tasks.write]
run = 'true'
next = [{ on = "success", do = ["check"] }]
[jobs.review.tasks.check]
run = 'exit 3'
next = [{ on = "failure", do = ["fix"] }]
[jobs.review.tasks.fix]
run = 'true'
"#;

#[test]
fn show_of_a_task_run_says_which_transition_reached_it() {
    let p = Project::new(LOOP);
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "the failure of `check` is handled by its transition");
    let id = |task: &str| p.task(task)["id"].as_u64().expect("task run id");
    let shown = p.run(&["show", &id("fix").to_string()]);
    let out = String::from_utf8_lossy(&shown.stdout);
    assert!(out.contains(&format!("reached: ← #{} check (failure)", id("check"))), "{out}");
    let first = p.run(&["show", &id("write").to_string()]);
    assert!(!String::from_utf8_lossy(&first.stdout).contains("reached"), "an entry task was reached by nothing");
    // The event that says so parses back into the typed event, field for field.
    let fired = events.iter().find(|e| e["event"] == "transition.fired" && e["to"] == "fix").expect("fired");
    let typed = gaffer::engine::EngineEvent::from_json(fired).expect("a gaffer event");
    let gaffer::engine::EventData::TransitionFired { from_task_run, on, to } = &typed.data else { panic!("{typed:?}") };
    assert_eq!((*from_task_run, on.as_str(), to.as_str()), (id("check"), "failure", "fix"));
    assert_eq!(typed.task_run, Some(id("fix")));
}
