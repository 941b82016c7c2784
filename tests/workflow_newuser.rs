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

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a headless run printed: its lines and its summary.
fn printed(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}

/// A fan-out over an output that is a JSON object dies before any item runs: the headless line
/// and the event say why (there is no failed attempt to say it), not only `template_error`.
#[test]
fn a_fan_out_over_an_object_says_why_it_died() {
    let p = Project::new(
        r#"
[jobs.fan.tasks.list]
run = '''echo 'output xs={"a": 1, "b": 2}' >&3'''
[jobs.fan.tasks.each]
needs = ["list"]
for_each = "{{ tasks.list.outputs.xs }}"
env = { ITEM = "{{ item }}" }
run = 'echo "$ITEM"'
"#,
    );
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(1));
    let said = printed(&out);
    let dead = said.lines().find(|l| l.contains("fan.each") && l.contains("dead:")).unwrap_or_else(|| panic!("{said}"));
    assert!(dead.contains("template_error: for_each: the rendered text is a JSON object, not a list"), "{dead}");
    let event = p.journal().into_iter().find(|e| e["event"] == "task.dead_lettered").expect("task.dead_lettered");
    assert!(event["detail"].as_str().is_some_and(|d| d.contains("JSON object")), "{event}");
}

/// A `when` naming an output the run did not write counts as false; the warning names the
/// outputs it did write, so the typo shows.
#[test]
fn a_when_over_a_missing_output_names_the_outputs_there_are() {
    let p = Project::new(
        r#"
[jobs.j.tasks.review]
run = 'echo "output verdict=ok" >&3'
next = [{ on = "success", when = "outputs.verdit == 'ok'", do = ["ship"] }]
[jobs.j.tasks.ship]
run = 'true'
"#,
    );
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = printed(&out);
    assert!(said.contains("counts as false") && said.contains("the outputs this run wrote: verdict"), "{said}");
}

/// The mistakes a newcomer from Orquesta or GitHub Actions makes first, all reported at once
/// with `file:line:col`, and nothing run.
#[test]
fn validate_names_each_newcomer_mistake_where_it_is() {
    let p = Project::new(
        r#"[jobs.ci.tasks.build]
run = "make"
next = [{ on = "success", do = ["tset"] }, { on = "failure", when = "{{ exit_code == 2 }}", do = ["report"] }]
[jobs.ci.tasks.test]
run = "make test"
[jobs.ci.tasks.report]
run = "echo report"
[jobs.ci.tasks.lint]
run = "lint"
join = 2
"#,
    );
    for command in ["validate", "run"] {
        let out = p.run(&[command, "workflow.toml"]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let said = stderr(&out);
        for wanted in [
            "workflow.toml:3:33: unknown task `tset` in `do` of task `build` (job `ci` has: build, test, report, lint)",
            "workflow.toml:3:69: bad expression in `when`",
            "(write a bare expression, without `{{ }}`)",
            "workflow.toml:10:8: `join` on task `lint`, which is the target of no transition",
        ] {
            assert!(said.contains(wanted), "{command}: expected `{wanted}` in:\n{said}");
        }
        assert!(!p.state_dir().join("state.redb").exists(), "{command}: nothing stored");
    }
}

/// In `tasks` and `show jN` a compensation reads as what it is (`ship.deploy (undo)`), not as a
/// second run of the step it undoes; loop rounds and items carry their labels.
#[test]
fn tables_name_compensations_rounds_and_items() {
    let p = Project::new(
        r#"
[jobs.ship.tasks.create]
run = 'true'
compensate = 'true'
next = [{ on = "success", do = ["poll"] }]
[jobs.ship.tasks.poll]
env = { PREV = "{{ tasks.poll.outputs.n | default(0) }}" }
run = 'echo "output n=$((PREV + 1))" >&3'
next = [{ on = "success", when = "outputs.n | int < 2", do = ["poll"] }, { on = "success", when = "outputs.n | int >= 2", do = ["fetch"] }]
[jobs.ship.tasks.fetch]
for_each = ["a", "b"]
run = 'true'
next = [{ on = "success", do = ["announce"] }]
[jobs.ship.tasks.announce]
retry = { max_attempts = 1 }
run = 'exit 1'
"#,
    );
    assert_eq!(p.run(&["run", "workflow.toml"]).status.code(), Some(1));
    for args in [&["tasks"][..], &["show", "j1"][..]] {
        let out = p.run(args);
        let table = String::from_utf8_lossy(&out.stdout);
        for wanted in ["ship.poll#2", "ship.fetch[1]", "ship.create (undo)"] {
            assert!(table.contains(wanted), "{args:?}: expected `{wanted}` in:\n{table}");
        }
    }
}
