//! Workflow control (SPEC §2.2) as a new user coming from Orquesta or GitHub Actions writes it:
//! what `validate` and `run` accept must run, and what they refuse must say where and why.

mod support;

use support::Project;

/// `validate` accepts a template naming a task upstream through transitions (here the task
/// itself, on its own loop), so `run` must give it that task's outputs: it said "`tasks.spin` is
/// undefined (upstream tasks: none)" because it looked only along `needs`.
#[test]
fn a_loop_counts_its_rounds_from_its_previous_output() {
    let p = Project::new(
        r#"
[jobs.j.tasks.start]
run = 'true'
next = [{ on = "success", do = ["spin"] }]
[jobs.j.tasks.spin]
max_iterations = 5
env = { PREV = "{{ tasks.spin.outputs.round | default(0) }}", FIRST = "{{ tasks.start.exit_code }}" }
run = 'r=$((PREV + 1)); echo "$r $FIRST" >> rounds; echo "output round=$r" >&3'
next = [{ on = "success", when = "outputs.round | int < 3", do = ["spin"] }]
"#,
    );
    let validate = p.run(&["validate", "workflow.toml"]);
    assert!(validate.status.success(), "{}", String::from_utf8_lossy(&validate.stderr));
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0, "{events:#?}");
    let rounds = std::fs::read_to_string(p.path().join("rounds")).expect("rounds");
    assert_eq!(rounds, "1 0\n2 0\n3 0\n", "each round saw the one before, and `start` through the transition");
}
