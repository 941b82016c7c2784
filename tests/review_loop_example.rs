//! `examples/review-loop.toml`, run where it lives (its fake agent is `./scripts/fake-claude.sh`):
//! write → review → revise until the reviewer's answer is `approved`, with every agent round's
//! cost read from its Claude-shaped JSON result.

use std::path::Path;

use serde_json::Value;

fn micros(v: &Value) -> u64 {
    (v.as_f64().expect("a number") * 1e6).round() as u64
}

#[test]
fn the_review_loop_example_revises_until_approved_and_records_each_rounds_cost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/review-loop.toml");
    let gaffer = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gaffer"))
            .args(args)
            .env("GAFFER_STATE_DIR", dir.path().join("state"))
            .env_remove("RUST_LOG")
            .output()
            .expect("gaffer")
    };
    let out = gaffer(&["run", &example.display().to_string(), "--headless"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("warning"), "no step warns (plain steps read no agent result): {said}");
    let tasks: Vec<Value> = serde_json::from_slice(&gaffer(&["tasks", "--json"]).stdout).expect("json");
    let runs = |task: &str| -> Vec<&Value> {
        let mut runs: Vec<&Value> = tasks.iter().filter(|t| t["task"] == task).collect();
        runs.sort_by_key(|t| t["iteration"].as_u64());
        runs
    };

    let reviews = runs("review");
    let rounds: Vec<u64> = reviews.iter().filter_map(|t| t["iteration"].as_u64()).collect();
    assert_eq!(rounds, [1, 2, 3], "three rounds of review");
    let verdicts: Vec<&str> = reviews.iter().map(|t| t["outputs"]["result"].as_str().unwrap_or("")).collect();
    assert_eq!(
        verdicts,
        ["changes requested: draft 1 needs more detail", "changes requested: draft 2 needs more detail", "approved"]
    );
    for review in &reviews {
        assert_eq!(review["state"], "succeeded");
        assert_eq!(micros(&review["cost_usd"]), 30_000, "each round's cost is recorded: {review:#}");
        assert_eq!(review["input_tokens"], 12);
        assert_eq!(review["output_tokens"], 480);
    }
    let revisions: Vec<&str> = runs("revise").iter().map(|t| t["outputs"]["result"].as_str().unwrap_or("")).collect();
    assert_eq!(revisions, ["draft 2", "draft 3"], "each revision builds on the one before");
    assert_eq!(runs("ship").len(), 1);
    assert_eq!(runs("ship")[0]["state"], "succeeded");
    assert!(runs("notify").is_empty(), "not reached: no task run (SPEC §2.2)");

    let jobs: Value = serde_json::from_slice(&gaffer(&["jobs", "--json"]).stdout).expect("json");
    assert_eq!(micros(&jobs[0]["cost_usd"]), 20_000 + 3 * 30_000 + 2 * 25_000, "the job run's cost adds up");
    let show = String::from_utf8_lossy(&gaffer(&["show", "j1"]).stdout).into_owned();
    assert!(show.contains("review.review#3"), "views name the rounds: {show}");

    // One task's rounds in one job run, in order, without sorting: `tasks --run --task`.
    let out = gaffer(&["tasks", "--run", "j1", "--task", "review", "--json"]);
    let rounds: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let iterations: Vec<u64> = rounds.iter().filter_map(|t| t["iteration"].as_u64()).collect();
    assert_eq!(iterations, [1, 2, 3], "{}", String::from_utf8_lossy(&out.stderr));
    let all: Vec<Value> = serde_json::from_slice(&gaffer(&["tasks", "--run", "j1", "--json"]).stdout).expect("json");
    assert_eq!(all.len(), tasks.len(), "one job run: all its task runs");
    let bad = gaffer(&["tasks", "--run", "jx"]);
    assert_eq!(bad.status.code(), Some(2), "a bad run id is a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a job run id"));
}
