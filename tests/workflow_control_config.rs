//! The workflow-control keys of SPEC §2.2 on the real binary, config side: `gaffer validate`
//! accepts an example of every key and reports mistakes with `file:line:col`. (Every key runs
//! now: tests/workflow_control.rs and tests/workflow_fanout.rs run them.)

mod support;

use support::Project;

const EVERY_KEY: &str = include_str!("fixtures/valid/workflow_control.toml");

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn validate_accepts_every_workflow_control_key() {
    let p = Project::new(EVERY_KEY);
    let out = p.run(&["validate", "workflow.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("workflow.toml: ok (2 jobs, 10 tasks"));
}

#[test]
fn max_iterations_alone_runs() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'echo ok'\nmax_iterations = 3\n");
    let out = p.run(&["run", "workflow.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn validate_reports_every_workflow_control_mistake_at_once() {
    let p = Project::new(
        r#"[jobs.j.tasks.a]
run = "true"
max_iterations = 0
next = [{ on = "sometimes", do = ["b"] }, { on = "success", when = "{{ x }}", do = ["nope"] }]
[jobs.j.tasks.b]
run = "true"
join = 2
"#,
    );
    let out = p.run(&["validate", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for wanted in [
        "workflow.toml:3:18: `max_iterations` must be an integer from 1 to 10000",
        "workflow.toml:4:16: `on` must be one of: success, failure, always (not `sometimes`)",
        "workflow.toml:4:68: bad expression in `when`",
        "(write a bare expression, without `{{ }}`)",
        "workflow.toml:4:85: unknown task `nope` in `do` of task `a`",
        "workflow.toml:7:8: `join = 2` on task `b`, which has 1 source task(s): a",
    ] {
        assert!(err.contains(wanted), "expected `{wanted}` in:\n{err}");
    }
}
