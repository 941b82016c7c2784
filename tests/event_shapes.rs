//! Golden test of the event JSON (SPEC §6): a workflow that emits most event kinds runs through
//! the real binary, and the shape of every line — its key set and each value's JSON type, per
//! event name — must equal the pinned file `tests/fixtures/event_shapes.txt`. It guards the
//! typed events (issue #10 item 4, `engine::EventData`): the Rust type may change, the JSON may
//! not.
//! Set `GAFFER_BLESS=1` to rewrite the file after a deliberate change to the contract.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use gaffer::engine::EngineEvent;
use serde_json::Value;
use support::{Project, Server, wait_until};

const WORKFLOW: &str = r#"
[jobs.shapes]
[jobs.shapes.tasks.ok]
run = 'echo "progress 1/2 half" >&3; echo "cost usd=0.0123 input_tokens=12 output_tokens=3 model=m" >&3; echo "bogus line" >&3'
[jobs.shapes.tasks.flaky]
retry = { max_attempts = 2, initial_interval = "10ms", jitter = 0.0 }
run = 'exit 3'
[jobs.shapes.tasks.after]
needs = ["flaky"]
run = 'true'
[jobs.shapes.tasks.slow]
timeout = "200ms"
run = 'sleep 5'

[jobs.saga]
budget_usd = 0.01
on_failure = 'exit 7'
on_budget = 'exit 0'
[jobs.saga.tasks.create]
compensate = 'true'
run = 'true'
next = [{ on = "success", do = ["items"] }]
[jobs.saga.tasks.items]
for_each = ["a", "b"]
run = 'true'
next = [{ on = "success", do = ["spend"] }]
[jobs.saga.tasks.spend]
run = 'echo "cost usd=0.02" >&3'

[jobs.handled]
[jobs.handled.tasks.check]
run = 'exit 3'
next = [{ on = "failure", do = ["fix"] }]
[jobs.handled.tasks.fix]
run = 'true'

[jobs.gate]
[jobs.gate.tasks.approve]
wait_for = "go"
wait_timeout = "50ms"
run = 'true'

[jobs.routed.tasks.gpu]
requires = ["gpu"]
run = 'true'
"#;

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One line per distinct shape: `event.name key:type key:type …`, keys sorted.
fn shapes(events: &[Value]) -> String {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events {
        let name = e["event"].as_str().expect("every line has an event name").to_string();
        let obj = e.as_object().expect("every event is an object");
        let keys: BTreeMap<&str, &str> = obj.iter().map(|(k, v)| (k.as_str(), kind(v))).collect();
        let shape = keys.iter().map(|(k, t)| format!("{k}:{t}")).collect::<Vec<_>>().join(" ");
        seen.entry(name).or_default().insert(shape);
    }
    let mut out = String::new();
    for (name, shapes) in seen {
        for shape in shapes {
            out.push_str(&format!("{name} {shape}\n"));
        }
    }
    out
}

#[test]
fn event_json_shapes_are_pinned() {
    let p = Project::new(WORKFLOW);
    let (code, mut all) = p.run_json(&["shapes", "saga", "handled", "gate"]);
    assert_eq!(
        code, 1,
        "flaky and slow fail one job run, spend crosses the other's budget, approve is never signalled"
    );
    {
        // `task.blocked`: a node without the label `serve`s (`run` would refuse the job).
        let _server = Server::start(&p);
        assert!(p.run(&["submit", "routed"]).status.success());
        let blocked = || p.journal().iter().any(|e| e["event"] == "task.blocked");
        wait_until(std::time::Duration::from_secs(10), "task.blocked", blocked);
    }
    all.extend(p.journal());
    let got = shapes(&all);
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/event_shapes.txt");
    if std::env::var_os("GAFFER_BLESS").is_some() {
        std::fs::write(&file, &got).expect("write golden file");
    }
    let want = std::fs::read_to_string(&file).expect("golden file");
    assert_eq!(got, want, "event JSON shapes changed (SPEC §6); GAFFER_BLESS=1 rewrites the file");
    // Money on the wire is a decimal number, whole dollars too (SPEC §4.1): a free task's
    // `cost_usd` was once the integer `0` beside a paid one's `0.0123`.
    for line in &all {
        for (key, value) in line.as_object().into_iter().flatten().filter(|(k, _)| k.ends_with("usd")) {
            assert_eq!(kind(value), "float", "{key} in {line}");
        }
    }
    // `gaffer tui` attached to a server parses the streamed lines back into typed events:
    // every one must survive, field for field.
    for line in &all {
        let parsed = EngineEvent::from_json(line).unwrap_or_else(|| panic!("not parsed back: {line}"));
        assert_eq!(&parsed.to_json(), line);
    }
}
