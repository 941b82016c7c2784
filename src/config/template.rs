//! Rendering of the templated task fields (`env` values, `args` items, `stdin`).
//!
//! Templates are Jinja (minijinja) with strict undefined behaviour: a typo or a missing upstream
//! output must fail the task run loudly instead of silently rendering an empty string.

use std::collections::{BTreeMap, HashSet};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

/// Everything a template can see when a task run starts. Serializable: in a cluster the fields
/// that read a secret param travel with it to the node that renders them (`engine::cluster`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TemplateContext {
    pub job: String,
    pub job_run_id: u64,
    pub params: BTreeMap<String, String>,
    /// The upstream tasks this task (transitively) needs, by name.
    pub tasks: BTreeMap<String, UpstreamTask>,
    /// This attempt's model from `retry.models` (`{{ model }}`); absent without it.
    pub model: Option<String>,
    /// A fan-out item's `(item_index, item)` (`{{ item_index }}`, `{{ item }}`); absent outside one.
    pub item: Option<(u32, serde_json::Value)>,
}

/// What a finished upstream task exposes to templates.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamTask {
    pub outputs: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
    /// A fanned-out task: its items' outputs in item order, which `outputs` then is (SPEC §2.2).
    pub items: Option<Vec<BTreeMap<String, String>>>,
}

/// The work one render may do: minijinja's fuel, about one unit per instruction. Generous for
/// interpolation and loops over upstream outputs; three nested `range(10000)` loops, which froze
/// the engine before there was a budget, run out in milliseconds.
pub const RENDER_FUEL: u64 = 50_000;
/// The largest rendered value. An `env` value or argument past 128 KiB cannot reach `exec`
/// anyway; `stdin` and cache keys get the same room as all outputs of a task run.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// True when `text` holds template syntax; anything else is used as it is, without rendering.
pub fn is_templated(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// Renders `template` against `ctx` within [`RENDER_FUEL`] and [`MAX_RENDERED_BYTES`]. Errors
/// are one human-readable line; an undefined reference is named (e.g. "`tasks.fetch.outputs.summary`
/// is undefined (task `fetch` has outputs: a, b)"). Every error is permanent: the same template
/// against the same upstream outputs fails the same way again.
pub fn render(template: &str, ctx: &TemplateContext) -> Result<String, String> {
    let mut env = strict_environment();
    env.set_fuel(Some(RENDER_FUEL));
    let compiled = env.template_from_str(template).map_err(|e| e.to_string())?;
    let root = context_value(ctx);
    let mut out = CappedOutput::default();
    match compiled.render_captured_to(&root, &mut out) {
        Ok(_) => String::from_utf8(out.bytes).map_err(|_| "the result is not UTF-8".to_string()),
        Err(_) if out.overflowed => Err(format!("the result is larger than {MAX_RENDERED_BYTES} bytes")),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(format!(
            "the template ran out of its budget ({RENDER_FUEL} steps); simplify it or do the work in the task"
        )),
        Err(e) if e.kind() == ErrorKind::UndefinedError => {
            let vars = compiled.undeclared_variables(true);
            Err(explain_undefined(&root, &vars).unwrap_or_else(|| e.to_string()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// What a transition's `when` sees besides the template context: the ending task run's own
/// facts (SPEC §2.2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WhenFacts {
    pub outputs: BTreeMap<String, String>,
    pub exit_code: Option<i32>,
    pub attempt: u32,
    /// The fan-out item as JSON text, and its index.
    pub item: Option<String>,
    pub item_index: Option<u32>,
}

/// Evaluates a bare `when` expression (no `{{ }}`) within [`RENDER_FUEL`]: its truthiness.
pub fn evaluate_when(expression: &str, ctx: &TemplateContext, own: &WhenFacts) -> Result<bool, String> {
    let mut env = strict_environment();
    env.set_fuel(Some(RENDER_FUEL));
    let compiled = env.compile_expression(expression).map_err(|e| e.to_string())?;
    let outputs: Value = own.outputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let item = own.item.as_deref().map(|text| match serde_json::from_str::<serde_json::Value>(text) {
        Ok(json) => Value::from_serialize(&json),
        Err(_) => Value::from(text),
    });
    let facts = [
        ("outputs", outputs),
        ("exit_code", Value::from(own.exit_code)),
        ("attempt", Value::from(own.attempt)),
        ("item", item.unwrap_or_default()),
        ("item_index", Value::from(own.item_index)),
    ];
    let root = minijinja::context! { ..Value::from_iter(facts), ..context_value(ctx) };
    match compiled.eval(root) {
        Ok(value) => Ok(value.is_true()),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(format!("ran out of its budget ({RENDER_FUEL} steps)")),
        Err(e) if e.kind() == ErrorKind::UndefinedError => {
            // Mostly an output the run did not write: say which it did.
            let keys: Vec<&str> = own.outputs.keys().map(String::as_str).collect();
            let wrote = if keys.is_empty() { "none".to_string() } else { keys.join(", ") };
            Err(format!("{e}; the outputs this run wrote: {wrote}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Collects a render's output and refuses to grow past [`MAX_RENDERED_BYTES`], which stops
/// the render at that point instead of after it built the whole value.
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered value too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compiles `template` and returns the variables it reads, with trivial attribute chains kept
/// (`tasks.fetch.outputs.summary`), so the validator can check them before anything runs.
pub(crate) fn check_syntax(template: &str) -> Result<HashSet<String>, String> {
    let env = strict_environment();
    let compiled = env.template_from_str(template).map_err(|e| e.to_string())?;
    Ok(compiled.undeclared_variables(true))
}

/// The filters `text` applies (`x | name`) that the template engine does not have, in order of
/// first use. minijinja looks filters up only when it renders, so a misspelt one compiled fine
/// and failed every run (`template_error`) instead of at load. `bare`: `text` is an expression
/// (`when`), not a template with `{{ }}` / `{% %}` blocks.
pub(crate) fn unknown_filters(text: &str, bare: bool) -> Vec<String> {
    let env = strict_environment();
    let mut unknown: Vec<String> = Vec::new();
    for name in filter_names(text, bare) {
        if unknown.contains(&name) {
            continue;
        }
        let probe = env.render_str(&format!("{{{{ none | {name} }}}}"), ());
        if probe.is_err_and(|e| e.kind() == ErrorKind::UnknownFilter) {
            unknown.push(name);
        }
    }
    unknown
}

/// The names after `|` in the code parts of `text` (inside `{{ }}` and `{% %}`, or all of it
/// when `bare`), outside string literals.
fn filter_names(text: &str, bare: bool) -> Vec<String> {
    let bytes = text.as_bytes();
    let (mut names, mut i) = (Vec::new(), 0);
    let mut in_code = bare;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        match (in_code, quote) {
            (false, _) if b == b'{' && matches!(next, Some(b'{' | b'%')) => {
                in_code = true;
                i += 1;
            }
            (false, _) => {}
            // An escaped character in a string literal (its quote does not end it).
            (true, Some(_)) if b == b'\\' => i += 1,
            (true, Some(q)) if b == q => quote = None,
            (true, Some(_)) => {}
            (true, None) if !bare && matches!(b, b'}' | b'%') && next == Some(b'}') => {
                in_code = false;
                i += 1;
            }
            (true, None) if b == b'"' || b == b'\'' => quote = Some(b),
            (true, None) if b == b'|' => {
                let rest = &text[i + 1..];
                let start = rest.len() - rest.trim_start().len();
                let name: String =
                    rest[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
            (true, None) => {}
        }
        i += 1;
    }
    names
}

/// Compiles a bare expression (`when`, no `{{ }}`) and returns the variables it reads, like
/// [`check_syntax`].
pub(crate) fn check_expression(expression: &str) -> Result<HashSet<String>, String> {
    let env = strict_environment();
    let compiled = env.compile_expression(expression).map_err(|e| e.to_string())?;
    Ok(compiled.undeclared_variables(true))
}

fn strict_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Values go to argv, env and stdin, never HTML.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // `stdin` text usually ends with a newline that the author meant to send.
    env.set_keep_trailing_newline(true);
    env
}

fn context_value(ctx: &TemplateContext) -> Value {
    let tasks: Value = ctx.tasks.iter().map(|(name, task)| (name.as_str(), upstream_value(task))).collect();
    let job: Value =
        [("name", Value::from(ctx.job.as_str())), ("run_id", Value::from(ctx.job_run_id))].into_iter().collect();
    let params: Value = ctx.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let model = ctx.model.as_deref().map(|m| ("model", Value::from(m)));
    let item =
        ctx.item.iter().flat_map(|(index, item)| [("item_index", Value::from(*index)), ("item", item_value(item))]);
    [("job", job), ("params", params), ("tasks", tasks)].into_iter().chain(model).chain(item).collect()
}

fn upstream_value(task: &UpstreamTask) -> Value {
    let map = |outputs: &BTreeMap<String, String>| -> Value {
        outputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    };
    let outputs = match &task.items {
        Some(items) => Value::from(items.iter().map(map).collect::<Vec<Value>>()),
        None => map(&task.outputs),
    };
    [("outputs", outputs), ("exit_code", Value::from(task.exit_code))].into_iter().collect()
}

/// `{{ item }}` renders as `model::fanout::item_text` (a string bare, anything else as JSON),
/// not in minijinja's own map format; `{{ item.os }}` and `{{ item[0] }}` still reach inside.
fn item_value(item: &serde_json::Value) -> Value {
    match item {
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => Value::from_object(Item(item.clone())),
        other => Value::from_serialize(other),
    }
}

/// A JSON object or array as a template value (see [`item_value`]).
#[derive(Debug)]
struct Item(serde_json::Value);

impl minijinja::value::Object for Item {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        match self.0 {
            serde_json::Value::Array(_) => minijinja::value::ObjectRepr::Seq,
            _ => minijinja::value::ObjectRepr::Map,
        }
    }

    fn get_value(self: &std::sync::Arc<Self>, key: &Value) -> Option<Value> {
        let found = match &self.0 {
            serde_json::Value::Object(map) => map.get(key.as_str()?),
            serde_json::Value::Array(items) => items.get(usize::try_from(key.as_i64()?).ok()?),
            _ => None,
        };
        found.map(item_value)
    }

    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        match &self.0 {
            serde_json::Value::Object(map) => {
                minijinja::value::Enumerator::Values(map.keys().map(|k| Value::from(k.as_str())).collect())
            }
            serde_json::Value::Array(items) => minijinja::value::Enumerator::Seq(items.len()),
            _ => minijinja::value::Enumerator::Empty,
        }
    }

    fn render(self: &std::sync::Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::model::fanout::item_text(&self.0))
    }
}

/// Finds the first referenced path that does not resolve and describes it, with what is there.
fn explain_undefined(root: &Value, vars: &HashSet<String>) -> Option<String> {
    let mut sorted: Vec<&String> = vars.iter().collect();
    sorted.sort();
    sorted.into_iter().find_map(|var| {
        let segments: Vec<&str> = var.split('.').collect();
        let missing_at = first_missing_segment(root, &segments)?;
        let parent = resolve(root, &segments[..missing_at]);
        let shown = segments[..=missing_at].join(".");
        Some(format!("`{shown}` is undefined{}", available_hint(&segments[..missing_at], parent.as_ref())))
    })
}

fn first_missing_segment(root: &Value, segments: &[&str]) -> Option<usize> {
    let mut current = root.clone();
    for (i, seg) in segments.iter().enumerate() {
        match current.get_attr(seg) {
            Ok(next) if !next.is_undefined() => current = next,
            _ => return Some(i),
        }
    }
    None
}

fn resolve(root: &Value, segments: &[&str]) -> Option<Value> {
    segments.iter().try_fold(root.clone(), |v, seg| v.get_attr(seg).ok())
}

fn available_hint(parent_path: &[&str], parent: Option<&Value>) -> String {
    let Some(parent) = parent else {
        return String::new();
    };
    let keys: Vec<String> = parent.try_iter().map(|it| it.map(|k| k.to_string()).collect()).unwrap_or_default();
    let listed = if keys.is_empty() { "none".to_string() } else { keys.join(", ") };
    match parent_path {
        [] => format!(" (available: {listed})"),
        ["tasks"] => format!(" (upstream tasks: {listed})"),
        ["tasks", name, "outputs"] => format!(" (task `{name}` has outputs: {listed})"),
        ["params"] => format!(" (params: {listed})"),
        _ => format!(" (has: {listed})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TemplateContext {
        let mut outputs = BTreeMap::new();
        outputs.insert("summary".to_string(), "all good".to_string());
        outputs.insert("count".to_string(), "3".to_string());
        let mut tasks = BTreeMap::new();
        tasks.insert("fetch".to_string(), UpstreamTask { outputs, exit_code: Some(0), items: None });
        let mut params = BTreeMap::new();
        params.insert("topic".to_string(), "rust".to_string());
        TemplateContext { job: "report".to_string(), job_run_id: 42, params, tasks, model: None, item: None }
    }

    #[test]
    fn renders_outputs_params_and_job() {
        let out = render(
            "{{ params.topic }}: {{ tasks.fetch.outputs.summary }} #{{ job.run_id }} {{ job.name }} rc={{ tasks.fetch.exit_code }}",
            &ctx(),
        );
        assert_eq!(out, Ok("rust: all good #42 report rc=0".to_string()));
    }

    #[test]
    fn does_not_escape_html_and_keeps_trailing_newline() {
        let mut c = ctx();
        c.params.insert("q".into(), "<a & \"b\">".into());
        assert_eq!(render("{{ params.q }}\n", &c), Ok("<a & \"b\">\n".to_string()));
    }

    #[test]
    fn missing_output_is_an_error_naming_it() {
        let err = render("x {{ tasks.fetch.outputs.sumary }}", &ctx()).expect_err("should fail");
        assert!(err.contains("tasks.fetch.outputs.sumary"), "{err}");
        assert!(err.contains("summary"), "lists what exists: {err}");
    }

    #[test]
    fn missing_task_and_param_are_named() {
        let err = render("{{ tasks.nope.outputs.x }}", &ctx()).expect_err("should fail");
        assert!(err.contains("`tasks.nope` is undefined"), "{err}");
        let err = render("{{ params.nope }}", &ctx()).expect_err("should fail");
        assert!(err.contains("`params.nope` is undefined"), "{err}");
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel_quickly() {
        let text = "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}x{% endfor %}{% endfor %}{% endfor %}";
        let err = render(text, &ctx()).expect_err("must run out");
        assert!(err.contains("ran out of its budget"), "{err}");
    }

    #[test]
    fn items_render_as_item_text_and_open_by_key_and_index() {
        let with = |item: serde_json::Value| TemplateContext { item: Some((3, item)), ..ctx() };
        let map = with(serde_json::json!({"os": "linux", "py": 3.12}));
        assert_eq!(
            render("{{ item }}|{{ item.os }}|{{ item.py }}|{{ item_index }}", &map).expect("renders"),
            r#"{"os":"linux","py":3.12}|linux|3.12|3"#
        );
        assert_eq!(
            render("{{ item }} {{ item[1] }}", &with(serde_json::json!(["a", 2]))).expect("renders"),
            r#"["a",2] 2"#
        );
        assert_eq!(render("{{ item }}", &with(serde_json::json!("a.txt"))).expect("renders"), "a.txt");
        assert!(render("{{ item.arch }}", &map).expect_err("fails").contains("item.arch"));
        let mut upstream = ctx();
        let items = vec![BTreeMap::from([("n".to_string(), "1".to_string())]), BTreeMap::new()];
        upstream.tasks.insert("fan".into(), UpstreamTask { items: Some(items), ..Default::default() });
        assert_eq!(
            render("{{ tasks.fan.outputs[0].n }} {{ tasks.fan.outputs | length }}", &upstream).expect("renders"),
            "1 2"
        );
    }

    #[test]
    fn a_huge_result_is_refused() {
        let err = render("{{ 'x' * 2000000 }}", &ctx()).expect_err("too large");
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
        let ok = render("{{ 'x' * 1000 }}", &ctx()).expect("small is fine");
        assert_eq!(ok.len(), 1000);
    }

    #[test]
    fn only_text_with_template_syntax_is_templated() {
        assert!(is_templated("a {{ b }}") && is_templated("{% if x %}{% endif %}"));
        assert!(!is_templated("plain $HOME { not }"));
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(render("{{ oops", &ctx()).is_err());
        assert!(check_syntax("{% if %}").is_err());
    }

    #[test]
    fn check_syntax_returns_nested_references() {
        let vars = check_syntax("{{ tasks.a.outputs.b }} {{ params.p }}{% set x = 1 %}{{ x }}").unwrap_or_default();
        assert!(vars.contains("tasks.a.outputs.b"));
        assert!(vars.contains("params.p"));
        assert!(!vars.iter().any(|v| v == "x"));
    }
}
