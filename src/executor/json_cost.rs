//! Cost from the final JSON result a CLI prints on stdout (`claude -p --output-format json`,
//! an OpenAI chat completion). Only the last stdout line that is a JSON object counts.

use serde_json::{Map, Value};

use super::protocol::parse_decimal_micros;
use super::types::CostReport;
use crate::config::CostSource;
use crate::sanitize::sanitize;

/// Claude's result embeds the whole answer text, which is often far longer than a log line
/// chunk, so JSON lines are reassembled up to this size (one line in flight at a time).
const MAX_JSON_LINE: usize = 8 * 1024 * 1024;

/// Watches stdout chunks; keeps only the cost of the last JSON-object line, never the line.
pub struct JsonCostTracker {
    source: CostSource,
    line: Vec<u8>,
    overflowed: bool,
    last: Option<CostReport>,
}

impl JsonCostTracker {
    /// `None` for `CostSource::Protocol`: nothing to watch.
    pub fn new(source: CostSource) -> Option<Self> {
        match source {
            CostSource::Protocol => None,
            _ => Some(Self { source, line: Vec::new(), overflowed: false, last: None }),
        }
    }

    /// `chunk` is a stdout line or a piece of one (no newline yet).
    pub fn push(&mut self, chunk: &[u8]) {
        if self.line.is_empty() && !self.overflowed && !starts_like_object(chunk) {
            // Not JSON: skip the rest of this line cheaply.
            self.overflowed = !chunk.ends_with(b"\n");
            return;
        }
        if !self.overflowed {
            if self.line.len() + chunk.len() > MAX_JSON_LINE {
                self.overflowed = true;
                self.line = Vec::new();
            } else {
                self.line.extend_from_slice(chunk);
            }
        }
        if chunk.ends_with(b"\n") {
            self.end_line();
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        self.overflowed = false;
        if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&line) {
            self.last = Some(extract(self.source, &obj));
        }
    }

    /// The cost of the last JSON object, or a warning when there was none or it had no cost.
    pub fn finish(mut self) -> Result<CostReport, String> {
        if !self.line.is_empty() {
            self.end_line(); // last line without a trailing newline
        }
        let label = self.label();
        match self.last {
            None => Err(format!("{label}: no JSON object found on stdout")),
            Some(c) if c == CostReport::default() => {
                Err(format!("{label}: the last JSON object on stdout has no cost or usage fields"))
            }
            Some(c) => Ok(c),
        }
    }

    fn label(&self) -> &'static str {
        match self.source {
            CostSource::OpenAiJson => "cost = \"openai-json\"",
            _ => "cost = \"claude-json\"",
        }
    }
}

fn starts_like_object(chunk: &[u8]) -> bool {
    chunk.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn extract(source: CostSource, obj: &Map<String, Value>) -> CostReport {
    match source {
        CostSource::OpenAiJson => extract_openai(obj),
        _ => extract_claude(obj),
    }
}

fn extract_claude(obj: &Map<String, Value>) -> CostReport {
    let usage = obj.get("usage");
    let field = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64);
    let base = field("input_tokens");
    // Cached prompt tokens are still input the model read.
    let input = [field("cache_creation_input_tokens"), field("cache_read_input_tokens")]
        .into_iter()
        .flatten()
        .try_fold(base, |acc, n| Some(acc.unwrap_or(0).checked_add(n)))
        .flatten();
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| obj.get("modelUsage").and_then(Value::as_object).and_then(|m| m.keys().next().cloned()));
    CostReport {
        usd_micros: obj.get("total_cost_usd").and_then(json_usd_micros),
        input_tokens: input,
        output_tokens: field("output_tokens"),
        model: clean_model(model),
    }
}

fn extract_openai(obj: &Map<String, Value>) -> CostReport {
    let usage = obj.get("usage");
    let field = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64);
    CostReport {
        usd_micros: None,
        input_tokens: field("prompt_tokens"),
        output_tokens: field("completion_tokens"),
        model: clean_model(obj.get("model").and_then(Value::as_str).map(str::to_string)),
    }
}

fn clean_model(model: Option<String>) -> Option<String> {
    model.filter(|m| !m.is_empty()).map(|m| sanitize(&m))
}

/// A JSON number's text through the exact decimal parser. serde_json prints small or huge
/// floats with an exponent (`1e-7`), so that is shifted into plain digits first.
fn json_usd_micros(value: &Value) -> Option<u64> {
    let text = value.as_number()?.to_string();
    match text.split_once(['e', 'E']) {
        None => parse_decimal_micros(&text),
        Some((mantissa, exp)) => parse_decimal_micros(&shift_decimal(mantissa, exp.parse().ok()?)?),
    }
}

/// `("1.5", -3)` → `"0.0015"`; `("2", 2)` → `"200"`. Bounded so a hostile exponent cannot
/// allocate much (anything outside ±40 is either 0 micros or an overflow anyway).
fn shift_decimal(mantissa: &str, exp: i32) -> Option<String> {
    if !(-40..=40).contains(&exp) || mantissa.starts_with('-') {
        return None;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let point = i32::try_from(int.len()).ok()? + exp; // position of '.' within `digits`
    let text = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        let (a, b) = digits.split_at(point as usize);
        format!("{a}.{b}")
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(source: CostSource, stdout: &[&[u8]]) -> Result<CostReport, String> {
        let mut t = JsonCostTracker::new(source).expect("tracker");
        for c in stdout {
            t.push(c);
        }
        t.finish()
    }

    #[test]
    fn claude_result() {
        let line = br#"{"type":"result","total_cost_usd":0.0421,"usage":{"input_tokens":1000,"cache_read_input_tokens":5,"output_tokens":200},"modelUsage":{"claude-x":{}}}"#;
        let cost = track(CostSource::ClaudeJson, &[b"thinking...\n", b"{\"partial\":1}\n", line]);
        let want = CostReport {
            usd_micros: Some(42_100),
            input_tokens: Some(1005),
            output_tokens: Some(200),
            model: Some("claude-x".into()),
        };
        assert_eq!(cost, Ok(want));
    }

    #[test]
    fn split_line_and_openai() {
        let chunks: &[&[u8]] =
            &[b"{\"model\":\"gpt-4o\",", b"\"usage\":{\"prompt_tokens\":7,", b"\"completion_tokens\":3}}\n", b"bye\n"];
        let cost = track(CostSource::OpenAiJson, chunks).expect("cost");
        assert_eq!((cost.input_tokens, cost.output_tokens, cost.model.as_deref()), (Some(7), Some(3), Some("gpt-4o")));
    }

    #[test]
    fn missing_json_warns() {
        assert!(track(CostSource::ClaudeJson, &[b"plain text\n"]).is_err());
        assert!(track(CostSource::ClaudeJson, &[b"{\"a\":1}\n"]).is_err());
        assert!(JsonCostTracker::new(CostSource::Protocol).is_none());
    }

    #[test]
    fn exponent_numbers() {
        assert_eq!(json_usd_micros(&serde_json::json!(1e-7)), Some(0));
        assert_eq!(json_usd_micros(&serde_json::json!(5e-7)), Some(1));
        assert_eq!(json_usd_micros(&serde_json::json!(1.5e3)), Some(1_500_000_000));
        assert_eq!(json_usd_micros(&serde_json::json!(2)), Some(2_000_000));
        assert_eq!(json_usd_micros(&serde_json::json!(-2)), None);
        assert_eq!(json_usd_micros(&serde_json::json!(1e300)), None);
        assert_eq!(shift_decimal("1.5", -3).as_deref(), Some("0.0015"));
    }
}
