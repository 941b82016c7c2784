//! `expect`: what a task's result must look like for its attempt to count as a success.
//!
//! `expect = { json_schema = "schemas/review.json" }` (the path relative to the workflow file)
//! or `expect = { output = "verdict", matches = "^(approve|reject)$" }`. The output checked is
//! the one `output` names, else `result`: the agent's result, which an agent cost source
//! (`claude-json`, `openai-json`) records. The pattern is checked here; the schema file is
//! checked when the file is loaded from disk ([`super::parse_file`]), not when a stored
//! definition is read back (a schema removed later must not keep a run from resuming: its
//! attempts fail with the reason instead).

use std::path::{Path, PathBuf};

use super::parse::{JobDraft, TaskFields};
use super::types::{CostSource, ExpectPolicy};
use super::values::{Entry, Located, Pos, Reader};

const EXPECT_KEYS: &[&str] = &["output", "json_schema", "matches"];
/// A schema file larger than this is refused (it is read at every attempt's end).
const MAX_SCHEMA_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub(super) struct ExpectDraft {
    pub at: Pos,
    pub output: Option<String>,
    pub json_schema: Option<Located<String>>,
    pub matches: Option<Located<String>>,
}

impl ExpectDraft {
    pub fn finish(&self, base_dir: &Path) -> ExpectPolicy {
        ExpectPolicy {
            output: self.output.clone(),
            json_schema: self.json_schema.as_ref().map(|p| schema_path(base_dir, &p.value)),
            matches: self.matches.as_ref().map(|m| m.value.clone()),
        }
    }
}

/// Reads `expect = { … }`: known keys, at least one check, a pattern that compiles.
pub(super) fn read(r: &mut Reader, entry: &Entry) -> Option<ExpectDraft> {
    let table = r.table(entry)?;
    let mut draft = ExpectDraft { at: entry.at, output: None, json_schema: None, matches: None };
    for e in r.entries(table, entry.at) {
        match e.name {
            "output" => draft.output = r.string(&e),
            "json_schema" => draft.json_schema = r.located_string(&e),
            "matches" => draft.matches = r.located_string(&e),
            _ => r.unknown_key(&e, "`expect`", EXPECT_KEYS),
        }
    }
    if !table.contains_key("json_schema") && !table.contains_key("matches") {
        r.error(entry.at, "`expect` needs `json_schema = \"FILE\"` or `matches = \"PATTERN\"` (or both)");
    }
    if let Some(pattern) = &draft.matches
        && let Err(e) = crate::model::expect::compile(&pattern.value)
    {
        r.error(pattern.at, format!("bad `matches` pattern `{}`: {e}", pattern.value));
        return None;
    }
    Some(draft)
}

/// Cross-checks with the task's other keys, and (`check_files`) the schema files on disk.
pub(super) fn check(r: &mut Reader, jobs: &[JobDraft], defaults: &TaskFields, base_dir: &Path, check_files: bool) {
    for task in jobs.iter().flat_map(|j| &j.tasks) {
        let Some(expect) = &task.expect else { continue };
        let cost = task.fields.cost.or(defaults.cost).unwrap_or(CostSource::Protocol);
        if expect.output.is_none() && cost == CostSource::Protocol {
            r.error(
                expect.at,
                format!(
                    "`expect` checks the agent's result (output `result`), which task `{}` does not have: \
                     name the output to check with `output = \"NAME\"`, or give it an agent cost source \
                     (cost = \"claude-json\" or \"openai-json\")",
                    task.name
                ),
            );
        }
        if let (true, Some(file)) = (check_files, &expect.json_schema)
            && let Err(e) = load_schema(&schema_path(base_dir, &file.value))
        {
            r.error(file.at, format!("`json_schema`: {e}"));
        }
    }
}

fn schema_path(base_dir: &Path, written: &str) -> PathBuf {
    let joined = base_dir.join(written);
    std::path::absolute(&joined).unwrap_or(joined)
}

/// Reads and checks a schema file: bounded, JSON, a valid JSON Schema (self-contained: no
/// remote references are fetched).
pub fn load_schema(path: &Path) -> Result<serde_json::Value, String> {
    let shown = path.display();
    let size = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?.len();
    if size > MAX_SCHEMA_BYTES {
        return Err(format!("{shown} is {size} bytes; a schema may have at most {MAX_SCHEMA_BYTES}"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{shown} is not JSON: {e}"))?;
    jsonschema::validator_for(&schema).map_err(|e| format!("{shown} is not a valid JSON Schema: {e}"))?;
    Ok(schema)
}
