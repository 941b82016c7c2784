//! Each documented shape, read from the fixtures the integration tests also run
//! (`tests/fixtures/agents/`), and the ways a result can be missing or hostile.

use super::*;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agents").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads `text` fed in pieces of `chunk` bytes, as the pipe reader would hand it over.
fn read_in(text: &str, chunk: usize) -> AgentOutcome {
    let mut agent = AgentJson::new(CostSource::ClaudeJson).expect("tracker");
    for piece in text.as_bytes().chunks(chunk) {
        agent.push(piece);
    }
    agent.finish()
}

fn read(text: &str) -> AgentOutcome {
    read_in(text, 7)
}

fn cost(model: Option<&str>, usd: Option<u64>, tokens: [u64; 4]) -> CostReport {
    CostReport::of(model, usd, tokens)
}

fn output<'a>(o: &'a AgentOutcome, key: &str) -> Option<&'a str> {
    o.outputs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Zero token counts read as `Some(0)`; the table below writes them as absent.
fn normalized(mut costs: Vec<CostReport>) -> Vec<CostReport> {
    for c in &mut costs {
        for slot in [&mut c.input_tokens, &mut c.output_tokens, &mut c.cache_read_tokens, &mut c.cache_write_tokens] {
            *slot = slot.filter(|n| *n > 0);
        }
    }
    costs
}

/// A fixture, the costs read from it, and its `result`, `session_id` and `model` outputs.
type Case<'a> = (&'a str, Vec<CostReport>, &'a str, Option<&'a str>, Option<&'a str>);

#[test]
fn every_documented_shape_is_read() {
    let sonnet = Some("claude-sonnet-4-5-20250929");
    let cases: Vec<Case> = vec![
        (
            "claude-code.json",
            // total_cost_usd split by modelUsage; the cache tokens `usage` counts beyond it go
            // to the model that cost the most.
            vec![
                cost(sonnet, Some(11_610), [9, 774, 36_391, 12_871]),
                cost(Some("claude-haiku-4-5-20251001"), Some(2_035), [0, 407, 0, 0]),
            ],
            "The current directory contains a Rust crate with src/, tests/ and examples/.",
            Some("550e8400-e29b-41d4-a716-446655440001"),
            sonnet,
        ),
        (
            "claude-code-stream.jsonl",
            vec![cost(sonnet, Some(30_377), [9, 50, 31_953, 5_337])],
            "All 42 tests pass.",
            Some("9d2f6a41-7b1e-4c53-a8f0-2e6d1c9b7a10"),
            sonnet,
        ),
        (
            "anthropic-messages.json",
            vec![cost(sonnet, None, [2095, 503, 1800, 0])],
            "Hi! My name is Claude.",
            None,
            sonnet,
        ),
        (
            "openai-chat.json",
            // prompt_tokens include the cached ones.
            vec![cost(Some("gpt-4o-2024-08-06"), None, [86, 300, 1920, 0])],
            "The image shows a wooden boardwalk path running through a lush green field.",
            None,
            Some("gpt-4o-2024-08-06"),
        ),
        (
            "openai-responses.json",
            vec![cost(Some("gpt-4.1-2025-04-14"), None, [36, 87, 0, 0])],
            "In a peaceful grove beneath a silver moon, a unicorn named Lumina discovered a hidden pool that reflected the stars.",
            None,
            Some("gpt-4.1-2025-04-14"),
        ),
        (
            "gemini-cli.json",
            vec![
                cost(Some("gemini-2.5-pro"), None, [3676, 174, 21_263, 0]),
                cost(Some("gemini-2.5-flash"), None, [8993, 40, 0, 0]),
            ],
            "The capital of France is Paris.",
            None,
            Some("gemini-2.5-pro"),
        ),
        (
            "gemini-cli-stream.jsonl",
            vec![cost(Some("gemini-2.5-flash"), None, [50, 200, 0, 0])],
            "Here are the files in the current directory: file1.txt and file2.txt.",
            Some("abc123"),
            Some("gemini-2.5-flash"),
        ),
        (
            "codex-exec.jsonl",
            vec![cost(None, None, [315, 122, 24_448, 0])],
            "Done. I updated the docs and added examples.",
            Some("0199a213-81c0-7800-8aa1-bbab2a035a53"),
            None,
        ),
    ];
    for (name, costs, result, session, model) in cases {
        let o = read(&fixture(name));
        assert_eq!(normalized(o.costs.clone()), costs, "{name}: costs");
        assert_eq!(output(&o, "result"), Some(result), "{name}: result");
        assert_eq!(output(&o, "session_id"), session, "{name}: session_id");
        assert_eq!(output(&o, "model"), model, "{name}: model");
        assert_eq!(output(&o, "is_error"), Some("false"), "{name}: is_error");
        assert_eq!(o.error, None, "{name}");
        assert!(o.warnings.is_empty(), "{name}: {:?}", o.warnings);
    }
}

#[test]
fn the_layout_does_not_matter() {
    let pretty = fixture("claude-code.json");
    let value: Value = serde_json::from_str(&pretty).expect("json");
    let compact = value.to_string();
    let want = read(&pretty).costs;
    assert_eq!(read(&compact).costs, want, "compact");
    assert_eq!(read(&format!("thinking…\n{compact}")).costs, want, "after text, no trailing newline");
    assert_eq!(read(&format!("[{compact}]\n")).costs, want, "inside an array (--verbose json)");
    assert_eq!(read_in(&pretty, 1).costs, want, "a byte at a time");
    assert_eq!(read_in(&pretty, 1 << 20).costs, want, "all at once");
    assert_eq!(output(&read(&pretty), "num_turns"), Some("2"));
}

#[test]
fn a_stream_cut_short_still_counts_its_messages_once() {
    let stream = fixture("claude-code-stream.jsonl");
    let cut: Vec<&str> = stream.lines().filter(|l| !l.contains("\"type\":\"result\"")).collect();
    let o = read(&cut.join("\n"));
    // The same tokens as the result line, without dollars: priced from the table.
    let sonnet = Some("claude-sonnet-4-5-20250929");
    assert_eq!(normalized(o.costs.clone()), vec![cost(sonnet, None, [9, 50, 31_953, 5_337])]);
    assert_eq!(o.warnings.len(), 1);
    assert!(o.warnings[0].contains("no final result"), "{:?}", o.warnings);
    assert!(o.outputs.is_empty());
}

#[test]
fn no_usage_is_a_warning_never_a_silent_zero() {
    for stdout in ["", "plain text\n", "{\"a\":1}\n", "{\"type\":\"result\",\"result\":\"hi\"}\n", "{\"cut\":"] {
        let o = read(stdout);
        assert!(o.costs.is_empty(), "{stdout:?}");
        assert!(o.warnings.iter().any(|w| w.contains("no agent result with usage")), "{stdout:?}: {:?}", o.warnings);
        assert!(o.warnings.iter().all(|w| w.starts_with("cost = \"claude-json\": ")), "{:?}", o.warnings);
    }
}

#[test]
fn absurd_numbers_are_refused_with_a_warning() {
    let text = r#"{"type":"result","total_cost_usd":0.5,"usage":{"input_tokens":18446744073709551615,"output_tokens":-4,"cache_read_input_tokens":1e30}}"#;
    let o = read(text);
    assert_eq!(o.costs, vec![CostReport { usd_micros: Some(500_000), ..CostReport::default() }]);
    assert_eq!(o.warnings.len(), 3, "{:?}", o.warnings);
    assert!(
        o.warnings[0].contains("`usage.input_tokens` = 18446744073709551615 is not a token count"),
        "{:?}",
        o.warnings
    );
    let negative = read(r#"{"type":"result","total_cost_usd":-1,"usage":{"output_tokens":3}}"#);
    assert_eq!(negative.costs.len(), 1);
    assert_eq!(negative.costs[0].usd_micros, None, "a negative cost is no cost: the tokens are priced instead");
    assert_eq!(negative.warnings.len(), 1);
}

#[test]
fn an_agent_that_says_it_failed_is_an_error() {
    let claude = read(
        r#"{"type":"result","subtype":"error_during_execution","is_error":true,"total_cost_usd":0.01,"usage":{"input_tokens":5},"session_id":"s"}"#,
    );
    assert_eq!(claude.error.as_deref(), Some("error_during_execution"));
    assert_eq!(output(&claude, "is_error"), Some("true"));
    assert_eq!(claude.costs.len(), 1, "what it spent still counts");
    let api = read(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
    assert_eq!(api.error.as_deref(), Some("overloaded_error: Overloaded"));
    let openai = read(r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#);
    assert_eq!(openai.error.as_deref(), Some("requests: Rate limit reached"));
    let codex = read("{\"type\":\"turn.failed\",\"error\":{\"message\":\"stream disconnected\"}}\n");
    assert_eq!(codex.error.as_deref(), Some("stream disconnected"));
    let fine = read(r#"{"type":"result","subtype":"error_max_turns","is_error":false,"total_cost_usd":0.1}"#);
    assert_eq!(fine.error, None, "Claude does not call running out of turns an error");
}

#[test]
fn codex_turns_add_up() {
    let turn = |i: u64, c: u64, o: u64| {
        format!(
            "{{\"type\":\"turn.completed\",\"usage\":{{\"input_tokens\":{i},\"cached_input_tokens\":{c},\"output_tokens\":{o}}}}}\n"
        )
    };
    let o = read(&format!("{}{}", turn(100, 40, 10), turn(50, 0, 5)));
    assert_eq!(normalized(o.costs), vec![cost(None, None, [110, 15, 40, 0])]);
}

#[test]
fn dollars_split_by_model_always_add_up_to_the_total() {
    let m = |name: &str, usd: Option<u64>| CostReport {
        usd_micros: usd,
        model: Some(name.into()),
        ..CostReport::default()
    };
    let total = |usd: u64| CostReport { usd_micros: Some(usd), ..CostReport::default() };
    let cases: Vec<(CostReport, Vec<CostReport>, Vec<Option<u64>>)> = vec![
        (total(100), vec![m("a", Some(60)), m("b", Some(40))], vec![Some(60), Some(40)]),
        // Rounding left a micro-dollar over: the biggest model takes it.
        (total(101), vec![m("a", Some(60)), m("b", Some(40))], vec![Some(61), Some(40)]),
        // Listed more than the total: taken back from the biggest first, then the next.
        (total(30), vec![m("a", Some(25)), m("b", Some(40))], vec![Some(25), Some(5)]),
        // Per-model dollars missing but a total given: nothing may be priced again.
        (total(7), vec![m("a", None), m("b", None)], vec![Some(7), Some(0)]),
        (CostReport::default(), vec![m("a", None)], vec![None]),
    ];
    for (totals, per_model, want) in cases {
        let got: Vec<Option<u64>> = split_by_model(totals, per_model).iter().map(|r| r.usd_micros).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn an_answer_too_big_for_an_output_is_said_and_dropped() {
    let big = "x".repeat(MAX_OUTPUT_BYTES + 1);
    let o = read(&format!("{{\"type\":\"result\",\"result\":\"{big}\",\"total_cost_usd\":0.2}}\n"));
    assert_eq!(output(&o, "result"), None);
    assert_eq!(output(&o, "is_error"), Some("false"));
    assert!(o.warnings.iter().any(|w| w.contains("larger than")), "{:?}", o.warnings);
}
