//! What an agent CLI or an LLM API printed as its JSON result on stdout, for tasks with
//! `cost = "claude-json"` / `"openai-json"`: its cost and tokens by model, its answer and
//! session as outputs, and whether it says it failed.
//!
//! Every complete top-level JSON value is read ([`JsonValues`]), and the shapes documented by
//! each tool are recognised whichever cost source names the task (README "Agent results"):
//!
//! | tool | final value | read |
//! |---|---|---|
//! | Claude Code `-p --output-format json` / `stream-json` | `{"type":"result",…}` | `total_cost_usd`, `usage`, `modelUsage`, `result`, `session_id`, `is_error`, `num_turns` |
//! | Anthropic Messages API | `{"type":"message","usage":…}` | `usage`, `model`, `content[].text` |
//! | OpenAI Chat Completions | `{"object":"chat.completion",…}` | `usage.prompt_tokens(_details)`, `completion_tokens`, `choices[0].message.content` |
//! | OpenAI Responses | `{"object":"response",…}` | `usage.input_tokens(_details)`, `output_tokens`, `output[].content[].text` |
//! | Gemini CLI `--output-format json` | `{"response":…,"stats":{"models":…}}` | per-model `tokens`, `response`, `session_id`, `error` |
//! | Gemini CLI `stream-json` | `{"type":"result","stats":…}` | `stats`, the `init` model and session, assistant `message`s |
//! | Codex CLI `exec --json` | `{"type":"turn.completed","usage":…}` | `usage` of every turn, the last `agent_message`, `thread_id` |
//!
//! The last final value wins (Codex turns add up). With no final value, the usage of a
//! Claude `stream-json` run's assistant messages is counted instead (the run was cut short);
//! with no usage at all, the attempt gets a warning — never a silent $0.

use serde_json::{Map, Value};

use super::json_values::{Found, JsonValues, MAX_JSON_ELEMENTS, MAX_JSON_VALUE};
use super::protocol::{MAX_OUTPUT_BYTES, quote};
use super::types::CostReport;
use crate::config::CostSource;
use crate::model::cost::MAX_TOKENS;
use crate::model::money::json_number_micros;
use crate::sanitize::sanitize;

/// Warnings about one result's fields are kept up to this many (a hostile result cannot fill
/// the attempt's record).
const MAX_WARNINGS: usize = 5;

/// What the JSON on stdout said, once the process is done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentOutcome {
    /// One per model, or one without a model.
    pub costs: Vec<CostReport>,
    /// `result`, `session_id`, `is_error`, `num_turns`, `model`, when known.
    pub outputs: Vec<(String, String)>,
    /// The result says the agent failed: why.
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

/// Just the `type` of a value, read without building anything else.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// A Claude `stream-json` assistant line, only what gaffer reads of it.
#[derive(serde::Deserialize)]
struct AssistantLine<'a> {
    #[serde(borrow)]
    message: Option<AssistantMessage<'a>>,
}

#[derive(serde::Deserialize)]
struct AssistantMessage<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    usage: Option<Value>,
}

/// Which tool's shape a final value had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Claude,
    Codex,
    Other,
}

/// A final result value, as read.
#[derive(Debug, Clone, PartialEq)]
struct Final {
    shape: Shape,
    costs: Vec<CostReport>,
    result: Option<String>,
    session_id: Option<String>,
    is_error: bool,
    error: Option<String>,
    num_turns: Option<u64>,
    model: Option<String>,
}

impl Final {
    fn new(shape: Shape) -> Final {
        Final {
            shape,
            costs: Vec::new(),
            result: None,
            session_id: None,
            is_error: false,
            error: None,
            num_turns: None,
            model: None,
        }
    }

    fn failed(message: String) -> Final {
        Final { is_error: true, error: Some(message), ..Final::new(Shape::Other) }
    }
}

/// Watches stdout chunks of one attempt.
pub struct AgentJson {
    source: CostSource,
    values: JsonValues,
    oversize: bool,
    last: Option<Final>,
    /// Claude `stream-json`: assistant messages' usage by model, and the id of the last one
    /// (each content block repeats its message with the same usage).
    streamed: Vec<CostReport>,
    streamed_messages: usize,
    last_message_id: Option<String>,
    /// From `init` / `thread.started` lines.
    session_id: Option<String>,
    model: Option<String>,
    /// The latest assistant text seen in a stream (Codex `agent_message`, Gemini `message`s).
    text: Text,
    warnings: Vec<String>,
}

/// Assistant text assembled from a stream, bounded like an output.
#[derive(Debug, Default)]
struct Text {
    value: Option<String>,
    too_big: bool,
}

impl Text {
    fn set(&mut self, text: &str) {
        self.too_big = text.len() > MAX_OUTPUT_BYTES;
        self.value = (!self.too_big).then(|| text.to_string());
    }

    fn append(&mut self, text: &str) {
        let len = self.value.as_ref().map_or(0, String::len);
        if self.too_big || len + text.len() > MAX_OUTPUT_BYTES {
            self.too_big = true;
            self.value = None;
        } else {
            self.value.get_or_insert_with(String::new).push_str(text);
        }
    }
}

impl AgentJson {
    /// `None` for `CostSource::Protocol`: nothing to watch.
    pub fn new(source: CostSource) -> Option<Self> {
        match source {
            CostSource::Protocol => None,
            _ => Some(AgentJson {
                source,
                values: JsonValues::new(),
                oversize: false,
                last: None,
                streamed: Vec::new(),
                streamed_messages: 0,
                last_message_id: None,
                session_id: None,
                model: None,
                text: Text::default(),
                warnings: Vec::new(),
            }),
        }
    }

    /// `chunk` is a stdout line or a piece of one.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut values = std::mem::take(&mut self.values);
        values.push(chunk, |found| match found {
            Found::Json(text) => self.read_text(text),
            Found::Oversize => self.oversize = true,
        });
        self.values = values;
    }

    /// Most lines of a stream are events gaffer has no use for (tool calls and their results,
    /// which can hold whole files) or assistant messages it needs three fields of: those are
    /// read without building a JSON tree; everything else is parsed whole.
    fn read_text(&mut self, text: &[u8]) {
        let kind = serde_json::from_slice::<Envelope>(text).ok().and_then(|e| e.kind);
        match kind.as_deref() {
            Some(
                "user" | "tool_use" | "tool_result" | "stream_event" | "turn.started" | "item.started" | "item.updated",
            ) => {}
            Some("assistant") => {
                if let Ok(line) = serde_json::from_slice::<AssistantLine>(text) {
                    self.claude_stream_message(line);
                }
            }
            _ => {
                if let Ok(value) = serde_json::from_slice::<Value>(text) {
                    self.read(&value);
                }
            }
        }
    }

    fn label(&self) -> &'static str {
        match self.source {
            CostSource::OpenAiJson => "cost = \"openai-json\"",
            _ => "cost = \"claude-json\"",
        }
    }

    fn warn(&mut self, message: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(format!("{}: {message}", self.label()));
        }
    }

    fn read(&mut self, value: &Value) {
        match value {
            Value::Array(items) => items.iter().filter_map(Value::as_object).for_each(|o| self.read_object(o)),
            Value::Object(o) => self.read_object(o),
            _ => {}
        }
    }

    fn read_object(&mut self, o: &Map<String, Value>) {
        let kind = o.get("type").and_then(Value::as_str);
        let object = o.get("object").and_then(Value::as_str);
        match (kind, object) {
            (Some("result"), _) if o.contains_key("stats") && !o.contains_key("total_cost_usd") => {
                let f = self.gemini_stream_result(o);
                self.last = Some(f);
            }
            (Some("result"), _) => {
                let f = self.claude_result(o);
                self.last = Some(f);
            }
            (Some("system" | "init"), _) => {
                self.session_id = string(o, "session_id").or(self.session_id.take());
                self.model = model_name(o.get("model")).or(self.model.take());
            }
            (Some("message"), _) if o.contains_key("usage") => {
                let f = self.anthropic_message(o);
                self.last = Some(f);
            }
            (Some("message"), _) => self.gemini_stream_message(o),
            (Some("thread.started"), _) => self.session_id = string(o, "thread_id"),
            (Some("item.completed"), _) => self.codex_item(o),
            (Some("turn.completed"), _) => self.codex_turn(o),
            (Some("turn.failed"), _) => {
                let message =
                    o.get("error").and_then(|e| string_of(e, "message")).unwrap_or_else(|| "turn failed".into());
                let f = Final { shape: Shape::Codex, ..Final::failed(message) };
                self.last = Some(self.merge_codex(f));
            }
            (Some("error"), _) if o.get("error").is_some_and(Value::is_object) => {
                self.last = Some(Final::failed(api_error(&o["error"])));
            }
            (Some("response.completed" | "response.failed" | "response.incomplete"), _) => {
                if let Some(r) = o.get("response").and_then(Value::as_object) {
                    let f = self.openai_response(r);
                    self.last = Some(f);
                }
            }
            (_, Some("chat.completion")) => {
                let f = self.openai_chat(o);
                self.last = Some(f);
            }
            (_, Some("response")) => {
                let f = self.openai_response(o);
                self.last = Some(f);
            }
            _ if o.contains_key("response") || o.get("stats").is_some_and(|s| s.get("models").is_some()) => {
                let f = self.gemini_json(o);
                self.last = Some(f);
            }
            _ if o.contains_key("choices") && o.contains_key("usage") => {
                let f = self.openai_chat(o);
                self.last = Some(f);
            }
            _ if o.get("error").is_some_and(Value::is_object) => {
                self.last = Some(Final::failed(api_error(&o["error"])));
            }
            _ => {}
        }
    }

    // ---- one function per documented shape -------------------------------------------------

    /// Claude Code's result (`--output-format json`, the last line of `stream-json`).
    fn claude_result(&mut self, o: &Map<String, Value>) -> Final {
        let usage = o.get("usage");
        let totals = CostReport {
            usd_micros: self.usd(o.get("total_cost_usd"), "total_cost_usd"),
            input_tokens: self.tokens(usage, "input_tokens", "usage"),
            output_tokens: self.tokens(usage, "output_tokens", "usage"),
            cache_read_tokens: self.tokens(usage, "cache_read_input_tokens", "usage"),
            cache_write_tokens: self.tokens(usage, "cache_creation_input_tokens", "usage"),
            model: model_name(o.get("model")),
        };
        let mut per_model = Vec::new();
        for (name, m) in o.get("modelUsage").and_then(Value::as_object).into_iter().flatten() {
            let path = format!("modelUsage.{}", quote(name));
            per_model.push(CostReport {
                usd_micros: self.usd(m.get("costUSD"), &format!("{path}.costUSD")),
                input_tokens: self.tokens(Some(m), "inputTokens", &path),
                output_tokens: self.tokens(Some(m), "outputTokens", &path),
                cache_read_tokens: self.tokens(Some(m), "cacheReadInputTokens", &path),
                cache_write_tokens: self.tokens(Some(m), "cacheCreationInputTokens", &path),
                model: model_name(Some(&Value::from(name.as_str()))),
            });
        }
        let costs = split_by_model(totals, per_model);
        let is_error = o.get("is_error").and_then(Value::as_bool).unwrap_or(false);
        let result = string(o, "result");
        let error = is_error.then(|| {
            let subtype = string(o, "subtype").unwrap_or_else(|| "error".into());
            let said = result.clone().or_else(|| o.get("errors").map(Value::to_string)).unwrap_or_default();
            if said.is_empty() { subtype } else { format!("{subtype}: {}", quote(&said)) }
        });
        Final {
            shape: Shape::Claude,
            model: main_model(&costs).or(self.model.clone()),
            costs,
            result,
            session_id: string(o, "session_id"),
            is_error,
            error,
            num_turns: o.get("num_turns").and_then(Value::as_u64),
        }
    }

    /// A `stream-json` assistant message: counted only if the result line never comes.
    fn claude_stream_message(&mut self, line: AssistantLine) {
        let Some(message) = line.message else { return };
        let id = message.id.map(String::from);
        if id.is_some() && id == self.last_message_id {
            return;
        }
        self.last_message_id = id;
        let Some(usage) = message.usage else { return };
        let report = CostReport {
            usd_micros: None,
            model: message.model.as_deref().filter(|m| !m.is_empty()).map(quote).or(self.model.clone()),
            ..self.anthropic_usage(&usage)
        };
        self.streamed_messages += 1;
        add_report(&mut self.streamed, report);
    }

    fn anthropic_usage(&mut self, usage: &Value) -> CostReport {
        CostReport {
            usd_micros: None,
            input_tokens: self.tokens(Some(usage), "input_tokens", "usage"),
            output_tokens: self.tokens(Some(usage), "output_tokens", "usage"),
            cache_read_tokens: self.tokens(Some(usage), "cache_read_input_tokens", "usage"),
            cache_write_tokens: self.tokens(Some(usage), "cache_creation_input_tokens", "usage"),
            model: None,
        }
    }

    /// The Anthropic Messages API's response.
    fn anthropic_message(&mut self, o: &Map<String, Value>) -> Final {
        let model = model_name(o.get("model"));
        let report = CostReport { model: model.clone(), ..self.anthropic_usage(&o["usage"]) };
        let text: Vec<&str> = o
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .collect();
        Final { costs: vec![report], result: Some(text.concat()), model, ..Final::new(Shape::Other) }
    }

    /// OpenAI Chat Completions: `prompt_tokens` include the cached ones.
    fn openai_chat(&mut self, o: &Map<String, Value>) -> Final {
        let usage = o.get("usage");
        let model = model_name(o.get("model"));
        let details = usage.and_then(|u| u.get("prompt_tokens_details"));
        let report = CostReport {
            output_tokens: self.tokens(usage, "completion_tokens", "usage"),
            model: model.clone(),
            ..self.openai_input(usage, "prompt_tokens", details, "usage.prompt_tokens_details")
        };
        let first = o.get("choices").and_then(|c| c.get(0));
        let result = first.and_then(|c| c.pointer("/message/content")).and_then(Value::as_str).map(str::to_string);
        Final { costs: vec![report], result, model, ..Final::new(Shape::Other) }
    }

    /// OpenAI Responses (and the `response` of a `response.completed` stream event).
    fn openai_response(&mut self, o: &Map<String, Value>) -> Final {
        let usage = o.get("usage");
        let model = model_name(o.get("model"));
        let details = usage.and_then(|u| u.get("input_tokens_details"));
        let report = CostReport {
            output_tokens: self.tokens(usage, "output_tokens", "usage"),
            model: model.clone(),
            ..self.openai_input(usage, "input_tokens", details, "usage.input_tokens_details")
        };
        let text: Vec<&str> = o
            .get("output")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| item.get("content").and_then(Value::as_array))
            .flatten()
            .filter(|c| c.get("type").and_then(Value::as_str) == Some("output_text"))
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .collect();
        let failed = string(o, "status").as_deref() == Some("failed");
        let error = o.get("error").filter(|e| e.is_object()).map(api_error);
        Final {
            costs: usage.map(|_| report).into_iter().collect(),
            result: (!text.is_empty()).then(|| text.concat()),
            model,
            is_error: failed || error.is_some(),
            error: error.or_else(|| failed.then(|| "the response failed".to_string())),
            ..Final::new(Shape::Other)
        }
    }

    /// OpenAI input counts: a total that includes cache reads (`cached_tokens`) and, on newer
    /// models, cache writes (`cache_write_tokens`); what is left is billed at the input price.
    fn openai_input(&mut self, usage: Option<&Value>, total: &str, details: Option<&Value>, path: &str) -> CostReport {
        let all = self.tokens(usage, total, "usage");
        let read = self.tokens(details, "cached_tokens", path);
        let write = self.tokens(details, "cache_write_tokens", path);
        let plain = all.map(|n| n.saturating_sub(read.unwrap_or(0)).saturating_sub(write.unwrap_or(0)));
        CostReport { input_tokens: plain, cache_read_tokens: read, cache_write_tokens: write, ..CostReport::default() }
    }

    /// Gemini CLI `--output-format json`: tokens per model, no dollars (priced by the table).
    fn gemini_json(&mut self, o: &Map<String, Value>) -> Final {
        let mut costs = Vec::new();
        let models = o.get("stats").and_then(|s| s.get("models")).and_then(Value::as_object);
        for (name, m) in models.into_iter().flatten() {
            let tokens = m.get("tokens");
            let path = format!("stats.models.{}.tokens", quote(name));
            let prompt = self.tokens(tokens, "prompt", &path);
            let cached = self.tokens(tokens, "cached", &path);
            let tool = self.tokens(tokens, "tool", &path);
            let output = [self.tokens(tokens, "candidates", &path), self.tokens(tokens, "thoughts", &path)];
            costs.push(CostReport {
                usd_micros: None,
                // `prompt` includes the cached tokens; tool-use prompts come on top.
                input_tokens: prompt.map(|p| p.saturating_sub(cached.unwrap_or(0)).saturating_add(tool.unwrap_or(0))),
                output_tokens: sum(output),
                cache_read_tokens: cached,
                cache_write_tokens: None,
                model: model_name(Some(&Value::from(name.as_str()))),
            });
        }
        let error = o.get("error").filter(|e| e.is_object()).map(api_error);
        Final {
            model: main_model(&costs),
            costs,
            result: string(o, "response"),
            session_id: string(o, "session_id"),
            is_error: error.is_some(),
            error,
            ..Final::new(Shape::Other)
        }
    }

    /// Gemini CLI `stream-json`: assistant text arrives in `message` lines (deltas appended).
    fn gemini_stream_message(&mut self, o: &Map<String, Value>) {
        if string(o, "role").as_deref() != Some("assistant") {
            return;
        }
        let content = string(o, "content").unwrap_or_default();
        if o.get("delta").and_then(Value::as_bool) == Some(true) {
            self.text.append(&content);
        } else {
            self.text.set(&content);
        }
    }

    /// Gemini CLI `stream-json`'s last line: `input_tokens` include `cached` ones (`input`,
    /// when given, is the rest).
    fn gemini_stream_result(&mut self, o: &Map<String, Value>) -> Final {
        let stats = o.get("stats");
        let all = self.tokens(stats, "input_tokens", "stats");
        let cached = self.tokens(stats, "cached", "stats");
        let plain = self.tokens(stats, "input", "stats").or(all.map(|n| n.saturating_sub(cached.unwrap_or(0))));
        let report = CostReport {
            usd_micros: None,
            input_tokens: plain,
            output_tokens: self.tokens(stats, "output_tokens", "stats"),
            cache_read_tokens: cached,
            cache_write_tokens: None,
            model: self.model.clone(),
        };
        let failed = string(o, "status").is_some_and(|s| s != "success");
        let error = o.get("error").filter(|e| e.is_object()).map(api_error);
        Final {
            costs: vec![report],
            result: self.text.value.clone(),
            session_id: self.session_id.clone(),
            model: self.model.clone(),
            is_error: failed || error.is_some(),
            error: error.or_else(|| failed.then(|| format!("status {}", string(o, "status").unwrap_or_default()))),
            ..Final::new(Shape::Other)
        }
    }

    fn codex_item(&mut self, o: &Map<String, Value>) {
        let Some(item) = o.get("item") else { return };
        let kind = item.get("type").or_else(|| item.get("item_type")).and_then(Value::as_str);
        if matches!(kind, Some("agent_message" | "assistant_message"))
            && let Some(text) = item.get("text").and_then(Value::as_str)
        {
            self.text.set(text);
        }
    }

    /// Codex CLI `exec --json`: each turn reports its own usage; `input_tokens` include the
    /// `cached_input_tokens`. The model is not in its output.
    fn codex_turn(&mut self, o: &Map<String, Value>) {
        let usage = o.get("usage");
        let all = self.tokens(usage, "input_tokens", "usage");
        let cached = self.tokens(usage, "cached_input_tokens", "usage");
        let report = CostReport {
            usd_micros: None,
            input_tokens: all.map(|n| n.saturating_sub(cached.unwrap_or(0))),
            output_tokens: self.tokens(usage, "output_tokens", "usage"),
            cache_read_tokens: cached,
            cache_write_tokens: None,
            model: self.model.clone(),
        };
        let f = Final { costs: vec![report], ..Final::new(Shape::Codex) };
        self.last = Some(self.merge_codex(f));
    }

    /// A Codex turn adds to the turns before it.
    fn merge_codex(&mut self, mut f: Final) -> Final {
        if let Some(prev) = self.last.take().filter(|p| p.shape == Shape::Codex) {
            for report in prev.costs.into_iter().rev() {
                f.costs.insert(0, report);
            }
            let mut merged = Vec::new();
            f.costs.into_iter().for_each(|r| add_report(&mut merged, r));
            f.costs = merged;
            f.is_error |= prev.is_error;
            f.error = f.error.or(prev.error);
        }
        f
    }

    // ---- fields, checked ----------------------------------------------------------------------

    /// A token count: a whole number up to `MAX_TOKENS`, else a warning and nothing.
    fn tokens(&mut self, parent: Option<&Value>, key: &str, path: &str) -> Option<u64> {
        let value = parent?.get(key).filter(|v| !v.is_null())?;
        match value.as_u64() {
            Some(n) if n <= MAX_TOKENS => Some(n),
            _ => {
                self.warn(format!(
                    "`{path}.{key}` = {} is not a token count (a whole number up to {MAX_TOKENS}); ignored",
                    quote(&value.to_string())
                ));
                None
            }
        }
    }

    /// Dollars, exactly (no float): a non-negative JSON number, else a warning and nothing.
    fn usd(&mut self, value: Option<&Value>, path: &str) -> Option<u64> {
        let value = value.filter(|v| !v.is_null())?;
        let micros = value.as_number().and_then(|n| json_number_micros(&n.to_string(), 0));
        if micros.is_none() {
            self.warn(format!("`{path}` = {} is not an amount of dollars; ignored", quote(&value.to_string())));
        }
        micros
    }

    /// What the JSON said, once stdout is closed.
    pub fn finish(mut self) -> AgentOutcome {
        if self.values.finish() {
            self.warn("stdout ended in the middle of a JSON value; that value was not read".to_string());
        }
        if self.oversize {
            self.warn(format!(
                "a JSON value on stdout was larger than {MAX_JSON_VALUE} bytes or {MAX_JSON_ELEMENTS} elements and was skipped"
            ));
        }
        let mut outcome = AgentOutcome::default();
        match self.last.take() {
            Some(f) => self.final_outcome(f, &mut outcome),
            None if !self.streamed.is_empty() => {
                self.warn(format!(
                    "no final result on stdout (was the agent cut short?): counted the usage of the {} assistant \
                     message(s) it streamed, priced from the pricing table",
                    self.streamed_messages
                ));
                outcome.costs = std::mem::take(&mut self.streamed);
            }
            None => self.warn(no_usage()),
        }
        outcome.warnings = self.warnings;
        outcome
    }

    fn final_outcome(&mut self, f: Final, outcome: &mut AgentOutcome) {
        let fallback_model = f.model.clone().or(self.model.clone());
        outcome.costs = f
            .costs
            .into_iter()
            .map(|r| CostReport { model: r.model.or(fallback_model.clone()), ..r })
            .filter(|r| r != &CostReport { model: r.model.clone(), ..CostReport::default() })
            .collect();
        if outcome.costs.is_empty() && !f.is_error {
            self.warn(no_usage());
        }
        let result = f.result.or(self.text.value.clone());
        if result.is_none() && self.text.too_big {
            self.warn(format!("the agent's answer is larger than {MAX_OUTPUT_BYTES} bytes: not kept as an output"));
        }
        let mut outputs = vec![
            ("result", result),
            ("session_id", f.session_id.or(self.session_id.take())),
            ("is_error", Some(f.is_error.to_string())),
            ("num_turns", f.num_turns.map(|n| n.to_string())),
            ("model", fallback_model),
        ];
        if let Some((_, Some(text))) = outputs.first()
            && text.len() > MAX_OUTPUT_BYTES
        {
            self.warn(format!("the agent's answer is larger than {MAX_OUTPUT_BYTES} bytes: not kept as an output"));
            outputs[0].1 = None;
        }
        outcome.outputs = outputs.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), sanitize(&v)))).collect();
        outcome.error = f.is_error.then(|| f.error.unwrap_or_else(|| "the agent reported an error".into()));
    }
}

fn no_usage() -> String {
    "no agent result with usage or cost found on stdout: this attempt's spending is unknown (recorded as $0); \
     see README \"Agent results\" for the shapes gaffer reads"
        .to_string()
}

/// The attempt's reports from Claude's totals and its per-model figures: one report per model
/// whose dollars add up exactly to `total_cost_usd` and whose tokens add up to at least
/// `usage` (the difference goes to the model that cost the most), or the totals alone when no
/// model is listed.
fn split_by_model(totals: CostReport, mut per_model: Vec<CostReport>) -> Vec<CostReport> {
    if per_model.is_empty() {
        return vec![totals];
    }
    let main =
        (0..per_model.len()).max_by_key(|&i| (per_model[i].usd_micros.unwrap_or(0), usize::MAX - i)).unwrap_or(0);
    if let Some(total) = totals.usd_micros {
        let listed: u64 = per_model.iter().map(|r| r.usd_micros.unwrap_or(0)).fold(0, u64::saturating_add);
        for r in &mut per_model {
            r.usd_micros.get_or_insert(0);
        }
        if total >= listed {
            per_model[main].usd_micros = per_model[main].usd_micros.map(|u| u.saturating_add(total - listed));
        } else {
            let mut excess = listed - total;
            let order: Vec<usize> = std::iter::once(main).chain((0..per_model.len()).filter(|&i| i != main)).collect();
            for i in order {
                let usd = per_model[i].usd_micros.unwrap_or(0);
                let take = usd.min(excess);
                per_model[i].usd_micros = Some(usd - take);
                excess -= take;
            }
        }
    }
    let kinds: [fn(&mut CostReport) -> &mut Option<u64>; 4] = [
        |r| &mut r.input_tokens,
        |r| &mut r.output_tokens,
        |r| &mut r.cache_read_tokens,
        |r| &mut r.cache_write_tokens,
    ];
    let mut totals = totals;
    for kind in kinds {
        let listed: u64 = per_model.iter_mut().map(|r| kind(r).unwrap_or(0)).fold(0, u64::saturating_add);
        let shortfall = kind(&mut totals).unwrap_or(0).saturating_sub(listed);
        if shortfall > 0 {
            let slot = kind(&mut per_model[main]);
            *slot = Some(slot.unwrap_or(0).saturating_add(shortfall));
        }
    }
    per_model
}

/// Adds `report` to the one of the same model in `reports`.
fn add_report(reports: &mut Vec<CostReport>, report: CostReport) {
    let Some(existing) = reports.iter_mut().find(|r| r.model == report.model) else {
        reports.push(report);
        return;
    };
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    };
    existing.usd_micros = add(existing.usd_micros, report.usd_micros);
    existing.input_tokens = add(existing.input_tokens, report.input_tokens);
    existing.output_tokens = add(existing.output_tokens, report.output_tokens);
    existing.cache_read_tokens = add(existing.cache_read_tokens, report.cache_read_tokens);
    existing.cache_write_tokens = add(existing.cache_write_tokens, report.cache_write_tokens);
}

/// The model that cost the most (then: used the most tokens), for the `model` output.
fn main_model(costs: &[CostReport]) -> Option<String> {
    let tokens = |r: &CostReport| sum([r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens]);
    costs.iter().max_by_key(|r| (r.usd_micros.unwrap_or(0), tokens(r).unwrap_or(0))).and_then(|r| r.model.clone())
}

fn sum<const N: usize>(parts: [Option<u64>; N]) -> Option<u64> {
    parts.into_iter().flatten().reduce(u64::saturating_add)
}

fn string(o: &Map<String, Value>, key: &str) -> Option<String> {
    o.get(key).and_then(Value::as_str).map(str::to_string)
}

fn string_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn model_name(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).filter(|m| !m.is_empty()).map(quote)
}

/// `overloaded_error: Overloaded` from an API's error object.
fn api_error(error: &Value) -> String {
    let kind = string_of(error, "type").or_else(|| error.get("code").filter(|c| !c.is_null()).map(Value::to_string));
    let message = string_of(error, "message").unwrap_or_else(|| "error".to_string());
    match kind {
        Some(kind) => format!("{}: {}", quote(&kind), quote(&message)),
        None => quote(&message),
    }
}

#[cfg(test)]
mod tests;
