//! What a new user met walking through issue 8 on main, each through the real binary.

mod support;

use support::Project;

/// issue 8 item 5: with no instance running, `gaffer retry` of a run with nothing to retry
/// was "recorded" with exit 0 (fixed on main by the retry-budget work); it is refused as the
/// running engine refuses it, and nothing is put in the inbox for the next start.
#[test]
fn offline_retry_with_nothing_to_retry_is_refused_and_records_nothing() {
    let p = Project::new(
        "[jobs.ok.tasks.a]\nrun = 'true'\n[jobs.bad.tasks.b]\nrun = 'exit 3'\nretry = { max_attempts = 1 }\n",
    );
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let runs = p.json(&["jobs", "--json"]);
    let run_of = |job: &str| runs.as_array().and_then(|r| r.iter().find(|j| j["job"] == job)).map(|j| j["id"].clone());
    let ok = run_of("ok").and_then(|v| v.as_u64()).expect("ok ran");
    let ok_task = p.json(&["show", &format!("j{ok}"), "--json"])["tasks"][0]["id"].as_u64().expect("task id");

    for (target, said) in [
        (format!("j{ok}"), format!("job run j{ok} has no dead or cancelled task runs to retry")),
        (
            ok_task.to_string(),
            format!("task run {ok_task} has succeeded; only dead or cancelled task runs can be retried"),
        ),
    ] {
        let out = p.run(&["retry", &target]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "retry {target}: {out:?}");
        assert!(stderr.contains(&said), "retry {target}: {stderr}");
    }
    let inbox = std::fs::read_dir(p.path().join(".gaffer/inbox")).map_or(0, |d| d.count());
    assert_eq!(inbox, 0, "nothing recorded for the next start");

    // A dead task is still recorded for the next start, which runs it again.
    let bad = run_of("bad").and_then(|v| v.as_u64()).expect("bad ran");
    let out = p.run(&["retry", &format!("j{bad}")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("recorded"), "{out:?}");
}
