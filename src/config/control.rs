//! Reading the workflow-control keys of a task (SPEC §2.2): `next`, `join`, `max_iterations`,
//! `for_each`, `for_each_concurrency`, `compensate`. What needs the whole job (targets, joins,
//! expressions and the templates' references) is checked in `checks`.

use toml_edit::{TableLike, Value};

use super::types::*;
use super::values::{Entry, Located, Pos, Reader};
use super::{Diagnostic, Diagnostics};

pub(super) const TRANSITION_KEYS: &[&str] = &["on", "when", "do"];
/// The most items a literal `for_each` list or matrix may make (a rendered list is bounded by
/// the size of what renders it).
pub(super) const MAX_LITERAL_ITEMS: usize = 100_000;

/// The control keys of one task as written, with positions for the cross-checks.
#[derive(Debug, Clone, Default)]
pub(super) struct ControlDraft {
    pub next: Vec<TransitionDraft>,
    pub join: Option<Located<Join>>,
    pub max_iterations: Option<u32>,
    pub for_each: Option<Located<ForEach>>,
    pub for_each_concurrency: Option<u32>,
    pub compensate: Option<String>,
    /// Every control key the task writes, where its key is (for [`unsupported_at_run`]).
    pub keys: Vec<Located<String>>,
}

#[derive(Debug, Clone)]
pub(super) struct TransitionDraft {
    pub on: TransitionOn,
    pub when: Option<Located<String>>,
    pub targets: Vec<Located<String>>,
}

impl TransitionDraft {
    pub fn finish(&self) -> Transition {
        let mut seen = std::collections::HashSet::new();
        Transition {
            on: self.on,
            when: self.when.as_ref().map(|w| w.value.clone()),
            targets: self.targets.iter().filter(|t| seen.insert(&t.value)).map(|t| t.value.clone()).collect(),
        }
    }
}

/// Reads `e` into `control` if it is a control key; `false` if it is not one.
pub(super) fn read(r: &mut Reader, e: &Entry, control: &mut ControlDraft) -> bool {
    match e.name {
        "next" => control.next = read_next(r, e),
        "join" => control.join = read_join(r, e),
        "max_iterations" => {
            let what = format!("from 1 to {MAX_ITERATIONS_CEILING}");
            control.max_iterations =
                r.int_in(e, 1, i64::from(MAX_ITERATIONS_CEILING), &what).and_then(|n| u32::try_from(n).ok());
        }
        "for_each" => control.for_each = read_for_each(r, e),
        "for_each_concurrency" => {
            control.for_each_concurrency =
                r.int_in(e, 1, i64::from(u32::MAX), "of at least 1").and_then(|n| u32::try_from(n).ok());
        }
        "compensate" => {
            control.compensate = r.string(e);
            if control.compensate.as_deref().is_some_and(|c| c.trim().is_empty()) {
                r.error(e.at, "`compensate` must not be empty: it is the shell text that undoes the task");
            }
        }
        _ => return false,
    }
    control.keys.push(Located { value: e.name.to_string(), at: e.key_at });
    true
}

/// `next = [{ on = "success", when = "…", do = ["a"] }, …]`, inline or as `[[…next]]` tables.
fn read_next(r: &mut Reader, e: &Entry) -> Vec<TransitionDraft> {
    let tables: Vec<(&dyn TableLike, Pos)> = if let Some(array) = e.item.as_array() {
        let mut tables = Vec::new();
        for v in array.iter() {
            let at = r.span_pos(v.span(), e.at);
            match v.as_inline_table() {
                Some(t) => tables.push((t as &dyn TableLike, at)),
                None => r.error(at, "each entry of `next` must be a table: { on = \"success\", do = [\"task\"] }"),
            }
        }
        tables
    } else if let Some(array) = e.item.as_array_of_tables() {
        array.iter().map(|t| (t as &dyn TableLike, r.span_pos(t.span(), e.at))).collect()
    } else {
        r.error(e.at, "`next` must be an array of transitions: [{ on = \"success\", do = [\"task\"] }]");
        Vec::new()
    };
    tables.into_iter().filter_map(|(table, at)| read_transition(r, table, at)).collect()
}

fn read_transition(r: &mut Reader, table: &dyn TableLike, at: Pos) -> Option<TransitionDraft> {
    let (mut on, mut when, mut targets) = (None, None, None);
    let mut complete = true;
    for e in r.entries(table, at) {
        match e.name {
            "on" => {
                on = read_on(r, &e);
                complete &= on.is_some();
            }
            "when" => {
                when = r.located_string(&e);
                complete &= when.is_some();
            }
            "do" => {
                targets = r.string_array(&e);
                if targets.as_ref().is_some_and(Vec::is_empty) {
                    r.error(e.at, "`do` must name at least one task");
                }
                complete &= targets.is_some();
            }
            _ => r.unknown_key(&e, "a transition", TRANSITION_KEYS),
        }
    }
    if !table.contains_key("on") {
        r.error(at, "a transition needs `on` (success, failure or always)");
    }
    if !table.contains_key("do") {
        r.error(at, "a transition needs `do` (the tasks it starts, e.g. do = [\"review\"])");
    }
    if !complete {
        return None;
    }
    Some(TransitionDraft { on: on?, when, targets: targets? })
}

fn read_on(r: &mut Reader, e: &Entry) -> Option<TransitionOn> {
    let text = r.string(e)?;
    let found = TransitionOn::ALL.into_iter().find(|on| on.as_str() == text);
    if found.is_none() {
        r.error(e.at, format!("`on` must be one of: success, failure, always (not `{text}`)"));
    }
    found
}

/// `join = "all"` or `join = N` (N ≥ 1).
fn read_join(r: &mut Reader, e: &Entry) -> Option<Located<Join>> {
    let join = match (e.item.as_str(), e.item.as_integer()) {
        (Some("all"), _) => Some(Join::All),
        (_, Some(n)) if n >= 1 => u32::try_from(n).ok().map(Join::Count),
        _ => None,
    };
    if join.is_none() {
        r.error(e.at, "`join` must be \"all\" or a number of sources of at least 1");
    }
    join.map(|value| Located { value, at: e.at })
}

/// `for_each = "{{ … }}"` (a template), `[…]` (a literal list) or `{ axis = […], … }` (a matrix).
fn read_for_each(r: &mut Reader, e: &Entry) -> Option<Located<ForEach>> {
    let value = if let Some(text) = e.item.as_str() {
        ForEach::Template(text.to_string())
    } else if let Some(array) = e.item.as_array() {
        let items: Vec<serde_json::Value> = array.iter().map(json_of).collect();
        if items.len() > MAX_LITERAL_ITEMS {
            r.error(e.at, format!("`for_each` lists {} items; at most {MAX_LITERAL_ITEMS} are allowed", items.len()));
            return None;
        }
        ForEach::List(items)
    } else if let Some(table) = e.item.as_table_like() {
        ForEach::Matrix(read_matrix(r, e, table)?)
    } else {
        r.error(e.at, "`for_each` must be a template string, an array of items, or a matrix table of arrays");
        return None;
    };
    Some(Located { value, at: e.at })
}

fn read_matrix(r: &mut Reader, e: &Entry, table: &dyn TableLike) -> Option<Vec<(String, Vec<serde_json::Value>)>> {
    let mut axes = Vec::new();
    let mut ok = true;
    for axis in r.entries(table, e.at) {
        match axis.item.as_array() {
            Some(values) if !values.is_empty() => {
                axes.push((axis.name.to_string(), values.iter().map(json_of).collect::<Vec<_>>()));
            }
            _ => {
                r.error(axis.at, format!("matrix axis `{}` must be a non-empty array of values", axis.name));
                ok = false;
            }
        }
    }
    if ok && axes.is_empty() {
        r.error(e.at, "a `for_each` matrix needs at least one axis, e.g. { os = [\"linux\", \"mac\"] }");
        return None;
    }
    let combinations = axes.iter().try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()));
    if combinations.is_none_or(|n| n > MAX_LITERAL_ITEMS) {
        r.error(e.at, format!("the `for_each` matrix makes more than {MAX_LITERAL_ITEMS} combinations"));
        return None;
    }
    ok.then_some(axes)
}

/// A TOML value as the JSON value a task sees as `{{ item }}` (a date-time becomes its text).
fn json_of(value: &Value) -> serde_json::Value {
    match value {
        Value::String(s) => serde_json::Value::from(s.value().as_str()),
        Value::Integer(i) => serde_json::Value::from(*i.value()),
        Value::Float(f) => serde_json::Number::from_f64(*f.value()).map_or(serde_json::Value::Null, Into::into),
        Value::Boolean(b) => serde_json::Value::from(*b.value()),
        Value::Datetime(d) => serde_json::Value::from(d.value().to_string()),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(json_of).collect()),
        Value::InlineTable(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.to_string(), json_of(v))).collect())
        }
    }
}

/// The keys of SPEC §2.2 that validate but that the engine does not run yet: `run`, `serve`
/// (and so `submit`) refuse a workflow using them, naming each place. Delete a key from this
/// list when the engine runs it; delete the function when the list is empty.
const NOT_RUN_YET: &[&str] = &["next", "join", "for_each", "for_each_concurrency", "compensate"];

pub fn unsupported_at_run(workflow: &Workflow) -> Result<(), Diagnostics> {
    let items: Vec<Diagnostic> = workflow
        .control_keys
        .iter()
        .filter(|u| NOT_RUN_YET.contains(&u.key.as_str()))
        .map(|u| Diagnostic {
            line: u.line,
            col: u.col,
            message: format!(
                "`{}` of task `{}` in job `{}` is parsed but not run yet (SPEC §2.2 workflow control; `gaffer validate` accepts it)",
                u.key, u.task, u.job
            ),
        })
        .collect();
    if items.is_empty() { Ok(()) } else { Err(Diagnostics::new(workflow.path.clone(), items)) }
}
