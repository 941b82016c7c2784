//! Does an attempt's result conform to its task's `expect`? An attempt that exited 0 with a
//! result that does not fails with reason `invalid_output`, and its retry policy applies.

use std::collections::BTreeMap;

use crate::config::ExpectPolicy;

/// The output `expect` checks when it names none: the agent's result.
pub const DEFAULT_OUTPUT: &str = "result";
/// A compiled pattern may take this much memory at most: a pattern is a config value.
const MAX_PATTERN_BYTES: usize = 1 << 20;
/// How much of a non-conforming value a message quotes, and how many schema errors it lists.
const QUOTE_CHARS: usize = 120;
const LISTED_ERRORS: usize = 3;

/// Compiles a `matches` pattern (bounded); the error is one line.
pub fn compile(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern).size_limit(MAX_PATTERN_BYTES).build().map_err(|e| {
        // The crate's message spans lines (the pattern, a caret, the error): keep the error.
        let text = e.to_string();
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&text);
        last.trim().trim_start_matches("error: ").to_string()
    })
}

/// `Ok` when the outputs conform to `expect`; else why not. `schema`: the JSON Schema of
/// `expect.json_schema`, read by the caller.
pub fn check(
    expect: &ExpectPolicy,
    outputs: &BTreeMap<String, String>,
    schema: Option<&serde_json::Value>,
) -> Result<(), String> {
    let name = expect.output.as_deref().unwrap_or(DEFAULT_OUTPUT);
    let Some(value) = outputs.get(name) else {
        let had: Vec<&str> = outputs.keys().map(String::as_str).collect();
        let had = if had.is_empty() { "none".to_string() } else { had.join(", ") };
        return Err(format!("no output `{name}` to check (outputs: {had})"));
    };
    if let Some(pattern) = &expect.matches
        && !compile(pattern)?.is_match(value)
    {
        return Err(format!("output `{name}` does not match `{pattern}`: {}", quote(value)));
    }
    if let Some(schema) = schema {
        let instance = json_in(value).map_err(|e| format!("output `{name}` is not JSON ({e}): {}", quote(value)))?;
        let validator = jsonschema::validator_for(schema).map_err(|e| format!("the schema is not valid: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .take(LISTED_ERRORS)
            .map(|e| {
                let at = e.instance_path().to_string();
                let said = clip(&e.to_string());
                if at.is_empty() { said } else { format!("at {at}: {said}") }
            })
            .collect();
        if !errors.is_empty() {
            return Err(format!("output `{name}` does not conform to its schema: {}", errors.join("; ")));
        }
    }
    Ok(())
}

/// The JSON in an output: the text itself, or the inside of one Markdown code fence around it
/// (agents often answer "```json … ```").
fn json_in(text: &str) -> Result<serde_json::Value, String> {
    let trimmed = text.trim();
    let fenced = trimmed
        .strip_prefix("```")
        .and_then(|rest| rest.strip_suffix("```"))
        .map(|inner| inner.split_once('\n').map_or(inner, |(_, body)| body));
    serde_json::from_str(fenced.unwrap_or(trimmed)).map_err(|e| e.to_string())
}

fn quote(value: &str) -> String {
    format!("`{}`", clip(&value.escape_debug().to_string()))
}

/// At most `QUOTE_CHARS` characters of `text`, `…` for the rest: a message quotes, not copies.
fn clip(text: &str) -> String {
    let mut shown: String = text.chars().take(QUOTE_CHARS).collect();
    if text.chars().count() > QUOTE_CHARS {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expect(output: Option<&str>, matches: Option<&str>) -> ExpectPolicy {
        ExpectPolicy { output: output.map(str::to_string), json_schema: None, matches: matches.map(str::to_string) }
    }

    #[test]
    fn a_pattern_over_a_named_output() {
        let e = expect(Some("verdict"), Some("^(approve|reject)$"));
        assert_eq!(check(&e, &outputs(&[("verdict", "approve")]), None), Ok(()));
        let no = check(&e, &outputs(&[("verdict", "maybe")]), None);
        assert_eq!(no, Err("output `verdict` does not match `^(approve|reject)$`: `maybe`".into()));
        let missing = check(&e, &outputs(&[("other", "x")]), None);
        assert_eq!(missing, Err("no output `verdict` to check (outputs: other)".into()));
    }

    #[test]
    fn a_schema_over_the_agent_result_by_default() {
        let schema = json!({"type": "object", "required": ["verdict"],
                            "properties": {"verdict": {"enum": ["approve", "reject"]}}});
        let e = expect(None, None);
        let ok = outputs(&[("result", "```json\n{\"verdict\": \"approve\"}\n```")]);
        assert_eq!(check(&e, &ok, Some(&schema)), Ok(()), "a fenced answer is read inside its fence");
        let wrong = check(&e, &outputs(&[("result", r#"{"verdict": "maybe"}"#)]), Some(&schema));
        assert!(wrong.as_ref().is_err_and(|w| w.contains("at /verdict:")), "{wrong:?}");
        let prose = check(&e, &outputs(&[("result", "I approve.")]), Some(&schema));
        assert!(prose.as_ref().is_err_and(|p| p.starts_with("output `result` is not JSON")), "{prose:?}");
    }

    #[test]
    fn a_bad_pattern_says_why_in_one_line() {
        let e = compile("^(approve").expect_err("unclosed");
        assert!(!e.contains('\n') && e.contains("unclosed group"), "{e}");
    }
}
