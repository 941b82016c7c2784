//! Agents as tasks, through the real binary: every documented result shape is read whatever its
//! layout, spending nobody can see is said out loud, the answer becomes outputs, prices cover
//! every kind of token and can be refreshed, and every view of the spending agrees.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{Project, Server, named, wait_until};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Dollars in JSON as micro-dollars.
fn micros(v: &Value) -> u64 {
    (v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) * 1e6).round() as u64
}

/// `0.0035` as micro-dollars, exactly (what a script printed).
fn decimal_micros(text: &str) -> u64 {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = format!("{frac:0<6}");
    assert!(frac.len() == 6, "more than six decimals: {text}");
    int.parse::<u64>().expect("digits") * 1_000_000 + frac.parse::<u64>().expect("digits")
}

/// JSON text must never hold a number with an exponent (`1e-6`): money reads as decimals. Only
/// numbers count: strings (`"550e8400-…"`) are skipped.
fn assert_plain_numbers(what: &str, text: &str) {
    let (mut in_string, mut escaped, mut prev) = (false, false, b' ');
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else {
            let exponent = prev.is_ascii_digit() && matches!(b, b'e' | b'E');
            assert!(
                !exponent,
                "{what}: a number with an exponent: {}",
                text.get(i.saturating_sub(40)..(i + 20).min(text.len())).unwrap_or("")
            );
        }
        prev = b;
    }
}

fn show(p: &Project, id: &str) -> Value {
    p.json(&["show", id, "--json"])
}

/// `task_run` → its `show --json`, for the task runs named in a `run --json` event stream.
fn task_ids(events: &[Value]) -> BTreeMap<String, u64> {
    named(events, "task.queued")
        .iter()
        .map(|e| (e["task"].as_str().unwrap_or("").to_string(), e["task_run"].as_u64().unwrap_or(0)))
        .collect()
}

/// Every shape a documented agent CLI or API prints, each read through `gaffer run` from the
/// fixture taken from its documentation: dollars (reported, or priced from the built-in table
/// by kind of token), tokens by model, and the answer as an output.
/// (task, fixture, cost source, micro-dollars, [in, out, cache read, cache write], models)
type Case<'a> = (&'a str, &'a str, &'a str, u64, [u64; 4], &'a [&'a str]);

#[test]
fn every_documented_agent_output_is_read_through_the_binary() {
    let cases: &[Case] = &[
        (
            "claude",
            "claude-code.json",
            "claude-json",
            13_645,
            [9, 1181, 36_391, 12_871],
            &["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"],
        ),
        (
            "claude_stream",
            "claude-code-stream.jsonl",
            "claude-json",
            30_377,
            [9, 50, 31_953, 5_337],
            &["claude-sonnet-4-5-20250929"],
        ),
        // 2095 × $3 + 503 × $15 + 1800 × $0.30 per million.
        (
            "anthropic",
            "anthropic-messages.json",
            "claude-json",
            14_370,
            [2095, 503, 1800, 0],
            &["claude-sonnet-4-5-20250929"],
        ),
        // 86 × $2.50 + 1920 cached × $1.25 + 300 × $10 per million.
        ("openai_chat", "openai-chat.json", "openai-json", 5_615, [86, 300, 1920, 0], &["gpt-4o-2024-08-06"]),
        // 36 × $2 + 87 × $8 per million.
        ("openai_responses", "openai-responses.json", "openai-json", 768, [36, 87, 0, 0], &["gpt-4.1-2025-04-14"]),
        // pro: 3676 × $1.25 + 21263 × $0.125 + 174 × $10 = 8992.875 µ$; flash: 8993 × $0.30 + 40 × $2.50 = 2797.9 µ$.
        (
            "gemini",
            "gemini-cli.json",
            "claude-json",
            8_993 + 2_798,
            [3676 + 8993, 174 + 40, 21_263, 0],
            &["gemini-2.5-pro", "gemini-2.5-flash"],
        ),
        // 50 × $0.30 + 200 × $2.50 per million.
        ("gemini_stream", "gemini-cli-stream.jsonl", "claude-json", 515, [50, 200, 0, 0], &["gemini-2.5-flash"]),
        // Codex does not name its model: the tokens are counted, unpriced, and the attempt says so.
        ("codex", "codex-exec.jsonl", "openai-json", 0, [315, 122, 24_448, 0], &["(none)"]),
    ];
    let mut text = String::from("[defaults]\nretry = { max_attempts = 1 }\n");
    for (task, file, source, ..) in cases {
        let path = fixture(&format!("agents/{file}"));
        text.push_str(&format!(
            "[jobs.j.tasks.{task}]\nargs = [\"cat\", \"{}\"]\ncost = \"{source}\"\n",
            path.display()
        ));
    }
    let p = Project::new(&text);
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 0);
    let ids = task_ids(&events);
    for (task, file, _, usd, tokens, models) in cases {
        let t = show(&p, &ids[*task].to_string());
        let a = &t["attempts"][0];
        assert_eq!(micros(&t["cost_usd"]), *usd, "{file}: dollars");
        let got = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"]
            .map(|k| a[k].as_u64().unwrap_or(0));
        assert_eq!(got, *tokens, "{file}: tokens by kind");
        let got: Vec<&str> =
            a["models"].as_array().expect("models").iter().map(|m| m["model"].as_str().unwrap_or("(none)")).collect();
        assert_eq!(got, *models, "{file}: models");
        assert!(t["outputs"]["result"].as_str().is_some_and(|r| !r.is_empty()), "{file}: the answer is an output: {t}");
        assert_eq!(t["outputs"]["is_error"], "false", "{file}");
        let warnings = a["warnings"].as_array().map_or(0, Vec::len);
        assert_eq!(warnings, usize::from(*task == "codex"), "{file}: {}", a["warnings"]);
    }
    let codex = show(&p, &ids["codex"].to_string());
    assert!(codex["attempts"][0]["warnings"][0].as_str().unwrap_or("").contains("counted as $0"), "{codex}");
}

/// Defect 1: an indented result, and OpenAI's Responses usage shape, were recorded as $0.
#[test]
fn spending_is_seen_in_an_indented_result_and_in_the_responses_shape() {
    let p = Project::new(
        r#"
[jobs.j.tasks.indented]
cost = "claude-json"
run = '''
echo "thinking..."
printf '{\n  "type": "result",\n  "total_cost_usd": 0.0421,\n  "usage": {\n    "input_tokens": 1000,\n    "output_tokens": 200\n  }\n}\n'
echo "done"
'''
[jobs.j.tasks.responses]
cost = "openai-json"
run = '''echo '{"object":"response","model":"gpt-4o","status":"completed","usage":{"input_tokens":1000000,"input_tokens_details":{"cached_tokens":0},"output_tokens":100000,"output_tokens_details":{"reasoning_tokens":40000}}}' '''
"#,
    );
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 0);
    let indented = p.task("indented");
    assert_eq!(indented["cost_usd"].to_string(), "0.0421");
    assert_eq!(indented["input_tokens"], 1000);
    let responses = p.task("responses");
    assert_eq!(micros(&responses["cost_usd"]), 3_500_000, "1M in × $2.50 + 100k out × $10 per million");
    assert_eq!(responses["output_tokens"], 100_000, "reasoning tokens are part of the output, counted once");
}

/// Found by a SPEC check: a task's own `budget_usd` passed by the final JSON result of an
/// attempt that exited 0 said `budget.exceeded` and then `task.succeeded`, and its dependent ran.
#[test]
fn a_result_past_the_tasks_own_budget_fails_it_with_reason_budget() {
    let p = Project::new(
        r#"
[jobs.d.tasks.t]
cost = "claude-json"
budget_usd = 0.20
run = '''echo '{"type":"result","total_cost_usd":0.30,"usage":{"input_tokens":10,"output_tokens":5}}' '''
[jobs.d.tasks.next]
needs = ["t"]
run = "echo next"
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "the job run failed");
    assert!(named(&events, "task.succeeded").is_empty(), "nothing succeeded: {events:?}");
    let t = p.task("t");
    assert_eq!((t["state"].as_str(), t["reason"].as_str()), (Some("dead"), Some("budget")), "{t}");
    assert_eq!(t["cost_usd"].to_string(), "0.3", "what it spent stays recorded");
    assert_eq!(p.task("next")["state"], "skipped");
}

#[test]
fn a_task_whose_agent_result_has_no_usage_says_so_everywhere() {
    let p = Project::new("[jobs.j.tasks.quiet]\ncost = \"claude-json\"\nrun = 'echo \"Sure! Here is the answer.\"'\n");
    let out = p.run(&["run", "workflow.toml", "--headless"]);
    assert!(out.status.success());
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.contains("warning: cost = \"claude-json\": no agent result with usage"), "{human}");
    let warned = |events: &[Value]| {
        named(events, "task.warning").iter().any(|e| e["message"].as_str().unwrap_or("").contains("no agent result"))
    };
    assert!(warned(&p.journal()), "the journal has the warning");
    let (_, events) = p.run_json(&[]);
    assert!(warned(&events), "so does `run --json`");
    let shown = String::from_utf8_lossy(&p.run(&["show", "1"]).stdout).to_string();
    assert!(shown.contains("    warning: cost = \"claude-json\": no agent result"), "{shown}");
    assert_eq!(show(&p, "1")["attempts"][0]["warnings"].as_array().map(Vec::len), Some(1));
}

/// `2^64-1` tokens were accepted and totals wrapped around to small numbers.
#[test]
fn absurd_token_counts_are_refused_and_totals_never_wrap() {
    let p = Project::new(
        r#"
[jobs.j.tasks.fd3]
run = 'echo "cost usd=0.01 input_tokens=18446744073709551615" >&3; echo "cost input_tokens=7 model=m" >&3'
[jobs.j.tasks.json]
cost = "claude-json"
run = '''echo '{"type":"result","total_cost_usd":0.02,"usage":{"input_tokens":18446744073709551615,"output_tokens":5}}' '''
[jobs.j.tasks.huge]
run = 'echo "cost usd=18446744073709.551615" >&3; echo "cost usd=18446744073709.551615" >&3'
[jobs.j.tasks.more]
needs = ["huge"]
run = 'echo "cost usd=18446744073709.551615" >&3'
"#,
    );
    let (_, events) = p.run_json(&[]);
    let warnings: Vec<&str> = named(&events, "task.warning").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("input_tokens must be a whole number of at most 1000000000000")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("`usage.input_tokens` = 18446744073709551615 is not a token count")),
        "{warnings:?}"
    );
    let fd3 = p.task("fd3");
    assert_eq!((micros(&fd3["cost_usd"]), fd3["input_tokens"].as_u64()), (0, Some(7)), "the bad line is refused whole");
    let json = p.task("json");
    assert_eq!(
        (json["cost_usd"].to_string().as_str(), json["input_tokens"].as_u64()),
        ("0.02", Some(0)),
        "the dollars still count"
    );
    let ceiling = 18_446_744_073_709.0;
    for v in [
        &p.task("huge")["cost_usd"],
        &p.json(&["cost", "--json"])["total_usd"],
        &p.json(&["status", "--json"])["cost_usd"],
    ] {
        assert!(v.as_f64().is_some_and(|usd| usd >= ceiling), "saturated at the ceiling, not wrapped: {v}");
    }
}

#[test]
fn an_agents_answer_becomes_outputs_and_its_reported_error_fails_the_attempt() {
    let p = Project::new(
        r#"
[jobs.j.tasks.review]
cost = "claude-json"
run = '''echo '{"type":"result","subtype":"success","is_error":false,"num_turns":3,"result":"approve","session_id":"sess-42","total_cost_usd":0.01,"usage":{"input_tokens":10,"output_tokens":2},"modelUsage":{"claude-haiku-4-5":{"inputTokens":10,"outputTokens":2,"costUSD":0.01}}}' '''
[jobs.j.tasks.act]
needs = ["review"]
run = 'echo "output said=$VERDICT/$SESSION/$TURNS/$MODEL" >&3'
env = { VERDICT = "{{ tasks.review.outputs.result }}", SESSION = "{{ tasks.review.outputs.session_id }}", TURNS = "{{ tasks.review.outputs.num_turns }}", MODEL = "{{ tasks.review.outputs.model }}" }
[jobs.j.tasks.broken]
cost = "claude-json"
retry = { max_attempts = 2, initial_interval = "10ms" }
run = '''echo '{"type":"result","subtype":"error_during_execution","is_error":true,"result":"API Error: 529 overloaded","total_cost_usd":0.003,"usage":{"input_tokens":3}}'; exit 0'''
"#,
    );
    let (code, events) = p.run_json(&[]);
    assert_eq!(code, 1, "the broken agent fails the run");
    assert_eq!(p.task("act")["outputs"]["said"], "approve/sess-42/3/claude-haiku-4-5");
    let broken = p.task("broken");
    assert_eq!((broken["state"].as_str(), broken["reason"].as_str()), (Some("dead"), Some("agent_error")));
    assert!(
        broken["detail"].as_str().unwrap_or("").contains("error_during_execution: API Error: 529 overloaded"),
        "{broken}"
    );
    assert_eq!(broken["attempt"], 2, "retried by its policy like any failure");
    assert_eq!(micros(&broken["cost_usd"]), 6_000, "what the failed attempts spent counts");
    let failed: Vec<&Value> = named(&events, "task.failed").into_iter().filter(|e| e["task"] == "broken").collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e["reason"] == "agent_error"), "{failed:?}");
    assert_eq!(broken["outputs"]["is_error"], "true");
}

#[test]
fn cache_tokens_are_priced_apart_and_shown() {
    let p = Project::new(
        "[jobs.j.tasks.t]\nrun = 'echo \"cost input_tokens=1000000 output_tokens=1000000 cache_read_tokens=1000000 cache_write_tokens=1000000 model=claude-sonnet-4-5\" >&3'\n",
    );
    assert_eq!(p.run_json(&[]).0, 0);
    // $3 in + $15 out + $0.30 cache read (0.1×) + $3.75 cache write (1.25×).
    assert_eq!(p.task("t")["cost_usd"].to_string(), "22.05");
    let a = &show(&p, "1")["attempts"][0];
    assert_eq!((a["cache_read_tokens"].as_u64(), a["cache_write_tokens"].as_u64()), (Some(1_000_000), Some(1_000_000)));
    let row = &p.json(&["cost", "--by", "model", "--json"])["rows"][0];
    assert_eq!((row["key"].as_str(), row["cache_read_tokens"].as_u64()), (Some("claude-sonnet-4-5"), Some(1_000_000)));
    let table = String::from_utf8_lossy(&p.run(&["cost", "--by", "model"]).stdout).to_string();
    assert!(table.contains("CACHE READ") && table.contains("1000000"), "{table}");
}

#[test]
fn pricing_shows_the_table_in_force_and_import_refreshes_it_from_litellm() {
    let p = Project::new(
        "[pricing.\"claude-sonnet-4-5\"]\ninput_per_mtok = 2\noutput_per_mtok = 10\n[jobs.j.tasks.t]\nrun = 'echo \"cost input_tokens=1000000 cache_read_tokens=1000000 model=house-model\" >&3'\n",
    );
    let row = |rows: &Value, model: &str| {
        rows.as_array().and_then(|r| r.iter().find(|x| x["model"] == model).cloned()).unwrap_or(Value::Null)
    };
    let builtin = p.json(&["pricing", "--json"]);
    let sonnet = row(&builtin, "claude-sonnet-4-5");
    assert_eq!(
        (sonnet["cache_read_per_mtok"].to_string().as_str(), sonnet["cache_write_per_mtok"].to_string().as_str()),
        ("0.3", "3.75")
    );
    assert_eq!(sonnet["source"], "built-in");
    assert_eq!(row(&builtin, "house-model"), Value::Null);
    let with_file = p.json(&["pricing", "workflow.toml", "--json"]);
    assert_eq!(
        (
            row(&with_file, "claude-sonnet-4-5")["input_per_mtok"].as_f64(),
            row(&with_file, "claude-sonnet-4-5")["source"].as_str()
        ),
        (Some(2.0), Some("workflow"))
    );
    // Not priced yet: counted as $0, with a warning.
    assert_eq!(p.run_json(&[]).0, 0);
    assert_eq!(micros(&p.task("t")["cost_usd"]), 0);
    let litellm = fixture("litellm/model_prices_and_context_window.json");
    let out = p.run(&["pricing", "import", &litellm.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 3 model prices"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(p.state_dir().join("pricing.toml").is_file());
    let imported = p.json(&["pricing", "--json"]);
    assert_eq!(row(&imported, "house-model")["source"], "imported");
    assert_eq!(row(&imported, "claude-opus-4-1")["source"], "built-in", "the built-in entries it does not name stay");
    assert_eq!(p.run_json(&[]).0, 0);
    // 1M × $0.70 + 1M cached × $0.07 per million.
    assert_eq!(p.task("t")["cost_usd"].to_string(), "0.77");
    let bad = p.run(&["pricing", "import", "workflow.toml"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not JSON"), "{}", String::from_utf8_lossy(&bad.stderr));
    let human = String::from_utf8_lossy(&p.run(&["pricing"]).stdout).to_string();
    assert!(human.contains("house-model") && human.contains("imported"), "{human}");
}

#[test]
fn validate_warns_about_a_silent_agent_under_a_shorter_heartbeat() {
    let p = Project::new(
        r#"
[jobs.j.tasks.silent]
cost = "claude-json"
heartbeat_timeout = "5m"
run = 'claude -p "$PROMPT" --output-format json'
[jobs.j.tasks.streaming]
cost = "claude-json"
heartbeat_timeout = "5m"
run = 'claude -p "$PROMPT" --output-format stream-json --verbose'
"#,
    );
    let out = p.run(&["validate", "workflow.toml"]);
    assert_eq!(out.status.code(), Some(0), "a warning, not an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("gaffer: warning: workflow.toml: job `j` task `silent`: its agent prints nothing until it ends"),
        "{stderr}"
    );
    assert!(!stderr.contains("`streaming`"), "{stderr}");
}

/// The watchdog counts any line on stdout or stderr as life: an agent that streams, or reports
/// progress on stderr, outlives a heartbeat_timeout shorter than its run; a silent one does not.
#[test]
fn an_agent_that_streams_or_talks_on_stderr_outlives_a_short_heartbeat() {
    let result = r#"echo '{"type":"result","total_cost_usd":0.01,"usage":{"output_tokens":1}}'"#;
    let p = Project::new(&format!(
        r#"
[defaults]
cost = "claude-json"
heartbeat_timeout = "1s"
retry = {{ max_attempts = 1 }}
[jobs.j.tasks.stderr]
run = '''for i in 1 2 3 4 5 6 7 8; do echo "working $i" >&2; sleep 0.3; done; {result}'''
[jobs.j.tasks.silent]
run = '''sleep 2.5; {result}'''
"#
    ));
    let (code, _) = p.run_json(&[]);
    assert_eq!(code, 1);
    assert_eq!(p.task("stderr")["state"], "succeeded");
    assert_eq!(micros(&p.task("stderr")["cost_usd"]), 10_000);
    assert_eq!(p.task("silent")["reason"], "heartbeat_timeout");
}

/// `examples/agents.toml` runs a fake agent printing Claude-shaped results streamed, on one
/// line and indented; `gaffer cost --by model` adds up to exactly what it printed.
#[test]
fn the_agents_example_costs_to_the_micro_dollar_what_its_agent_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents.toml");
    let gaffer = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gaffer"))
            .args(args)
            .env("GAFFER_STATE_DIR", dir.path().join("state"))
            .env("FAKE_AGENT_LEDGER", &ledger)
            .env_remove("RUST_LOG")
            .output()
            .expect("gaffer")
    };
    let out = gaffer(&["run", &example.display().to_string(), "--headless"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut printed: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    for line in std::fs::read_to_string(&ledger).expect("ledger").lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let row = printed.entry(f[0].to_string()).or_default();
        row[0] += decimal_micros(f[1]);
        for k in 0..4 {
            row[k + 1] += f[k + 2].parse::<u64>().expect("tokens");
        }
    }
    assert_eq!(printed.len(), 2, "two models: {printed:?}");
    let cost: Value = serde_json::from_slice(&gaffer(&["cost", "--by", "model", "--json"]).stdout).expect("json");
    let mut counted: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    for r in cost["rows"].as_array().expect("rows") {
        let tokens = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"]
            .map(|k| r[k].as_u64().unwrap_or(0));
        counted.insert(
            r["key"].as_str().unwrap_or("").to_string(),
            [micros(&r["cost_usd"]), tokens[0], tokens[1], tokens[2], tokens[3]],
        );
    }
    assert_eq!(counted, printed);
    let summary: Value = serde_json::from_slice(&gaffer(&["show", "5", "--json"]).stdout).expect("json");
    assert_eq!(summary["task"], "summary");
    let show_log = std::fs::read_to_string(dir.path().join("state/logs/1/5.1.log")).expect("summary log");
    assert!(
        show_log.contains("security review: looks fine") && show_log.contains("tests review: looks fine"),
        "{show_log}"
    );
}

/// Cost as `cost`, `show`, `status --json`, the journal, `/metrics` and the TUI (in-process
/// and attached through `/v1/snapshot`) see it, on one state dir: the same figures everywhere,
/// and no money printed with an exponent.
#[test]
fn every_view_of_the_spending_agrees() {
    let claude = fixture("agents/claude-code.json");
    let responses = fixture("agents/openai-responses.json");
    let p = Project::new(&format!(
        r#"
[jobs.a.tasks.agent]
args = ["cat", "{}"]
cost = "claude-json"
[jobs.a.tasks.tiny]
run = 'echo "cost usd=0.000001 model=m-tiny" >&3'
[jobs.a.tasks.tokens]
run = 'echo "cost input_tokens=1000 output_tokens=500 cache_read_tokens=2000 model=claude-sonnet-4-5" >&3'
[jobs.a.tasks.anon]
run = 'echo "cost usd=0.25" >&3'
[jobs.b.tasks.openai]
args = ["cat", "{}"]
cost = "openai-json"
"#,
        claude.display(),
        responses.display()
    ));
    let out = p.run(&["run", "workflow.toml", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_plain_numbers("run --json", &String::from_utf8_lossy(&out.stdout));

    // The reference: `gaffer cost --by model`.
    let by_model = p.json(&["cost", "--by", "model", "--json"]);
    let expected: BTreeMap<String, u64> = by_model["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["key"].as_str().unwrap_or("").to_string(), micros(&r["cost_usd"])))
        .collect();
    let total = micros(&by_model["total_usd"]);
    // claude-code.json 13645 (sonnet 11610, haiku 2035), 1 µ$, 1000 × $3 + 500 × $15 + 2000 × $0.30
    // per million = 11100 µ$, $0.25 without a model, and 768 µ$ for gpt-4.1.
    let want: BTreeMap<String, u64> = [
        ("(none)", 250_000),
        ("claude-haiku-4-5-20251001", 2_035),
        ("claude-sonnet-4-5", 11_100),
        ("claude-sonnet-4-5-20250929", 11_610),
        ("gpt-4.1-2025-04-14", 768),
        ("m-tiny", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(expected, want);
    assert_eq!(total, want.values().sum::<u64>());
    let by_job = p.json(&["cost", "--json"]);
    assert_eq!(by_job["rows"].as_array().expect("rows").iter().map(|r| micros(&r["cost_usd"])).sum::<u64>(), total);

    let status = p.json(&["status", "--json"]);
    assert_eq!(micros(&status["cost_usd"]), total, "status --json");
    let shown: u64 = [show(&p, "j1"), show(&p, "j2")].iter().map(|j| micros(&j["cost_usd"])).sum();
    assert_eq!(shown, total, "show jN");
    let tiny = p.task("tiny");
    assert_eq!(tiny["cost_usd"].as_f64(), Some(0.000001));

    let mut journal: BTreeMap<String, u64> = BTreeMap::new();
    for e in named(&p.journal(), "task.cost") {
        *journal.entry(e["model"].as_str().unwrap_or("(none)").to_string()).or_default() += micros(&e["usd"]);
    }
    assert_eq!(journal, expected, "the journal's task.cost events");
    let events_dir = p.state_dir().join("events");
    for f in std::fs::read_dir(&events_dir).expect("events") {
        assert_plain_numbers("journal", &std::fs::read_to_string(f.expect("entry").path()).expect("journal file"));
    }
    for args in [
        &["tasks", "--json"][..],
        &["show", "j1", "--json"],
        &["show", "3", "--json"],
        &["status", "--json"],
        &["cost", "--by", "model", "--json"],
    ] {
        assert_plain_numbers(&format!("{args:?}"), &String::from_utf8_lossy(&p.run(args).stdout));
    }

    // The TUI of `gaffer run`: a model built from the in-process engine's snapshot.
    let in_process = in_process_snapshot(&p);
    let model = gaffer::tui::Model::new(in_process, 0, "test", Vec::new());
    assert_eq!(tui_by_model(&model), expected, "TUI in-process");
    assert_eq!(model.cost.total, total);

    // `gaffer serve --listen`: /metrics, and `gaffer tui` attached through /v1/snapshot.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let _server = Server::spawn(
        p.gaffer(&["serve", "workflow.toml", "--headless", "--listen", &addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let token_file = p.state_dir().join("token");
    wait_until(Duration::from_secs(10), "the token", || {
        std::fs::read_to_string(&token_file).is_ok_and(|t| t.len() > 60)
    });
    wait_until(Duration::from_secs(10), "the listener", || std::net::TcpStream::connect(&addr).is_ok());
    let token = std::fs::read_to_string(&token_file).expect("token").trim().to_string();
    let metrics = http_get(&addr, "/metrics", &token);
    let mut scraped: BTreeMap<String, u64> = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("gaffer_cost_usd_total{")) {
        let (labels, value) = line.rsplit_once(' ').expect("value");
        let model = labels.trim_start_matches("gaffer_cost_usd_total{model=\"").trim_end_matches("\"}");
        scraped.insert(model.to_string(), decimal_micros(value));
    }
    assert_eq!(scraped, expected, "/metrics");
    assert_plain_numbers("/v1/cost", &http_get(&addr, "/v1/cost?by=model", &token));
    let socket = p.state_dir().join("gaffer.sock");
    wait_until(Duration::from_secs(10), "the socket", || socket.exists());
    assert_eq!(p.json(&["cost", "--by", "model", "--json"]), by_model, "the same answer through the socket");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let attached = rt.block_on(async {
        use gaffer::engine::Control;
        let remote = gaffer::api::RemoteEngine::connect(&p.state_dir()).await.expect("connect");
        remote.snapshot().await.expect("snapshot")
    });
    let model = gaffer::tui::Model::new(attached, 0, "test", Vec::new());
    assert_eq!(tui_by_model(&model), expected, "TUI attached to serve");
    assert_eq!(model.cost.total, total);
}

fn tui_by_model(model: &gaffer::tui::Model) -> BTreeMap<String, u64> {
    model.cost.by_model.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v)).collect()
}

/// The snapshot `gaffer run`'s TUI starts from: an engine started in this process on the state
/// dir, asked, and stopped.
fn in_process_snapshot(p: &Project) -> gaffer::engine::EngineSnapshot {
    use std::sync::Arc;
    let file = p.path().join("workflow.toml");
    let source = std::fs::read_to_string(&file).expect("workflow");
    let workflow = gaffer::config::parse(&file, &source).expect("valid");
    let (store, closer, lock) = gaffer::store::open_writer(&p.state_dir()).expect("open state dir");
    let pricing = gaffer::model::cost::Pricing::new(gaffer::config::pricing::builtin(), &workflow.pricing);
    let config = gaffer::engine::EngineConfig {
        workflow: Arc::new(workflow),
        source,
        state_dir: std::path::absolute(p.state_dir()).expect("absolute"),
        store: store.into(),
        location: gaffer::store::StoreLocation::state_dir(&p.state_dir()),
        executor: Arc::new(gaffer::executor::LocalExecutor),
        clock: Arc::new(gaffer::engine::SystemClock),
        workers: 2,
        pricing,
        labels: Vec::new(),
        cluster: None,
    };
    let system = actix::System::new();
    let snapshot = system.block_on(async move {
        let handle = gaffer::engine::start(config);
        let snapshot = handle.snapshot().await.expect("snapshot");
        handle.shutdown().await;
        snapshot
    });
    drop(system);
    closer.close(Duration::from_secs(5));
    drop(lock);
    snapshot
}

/// The body of `GET path` over TCP with the bearer token.
fn http_get(addr: &str, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}
