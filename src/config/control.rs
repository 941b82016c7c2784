//! Reading the workflow-control keys of a task (SPEC §2.2): `next`, `join`, `max_iterations`,
//! `for_each`, `for_each_concurrency`, `compensate`. What needs the whole job (targets, joins,
//! expressions and the templates' references) is checked in `checks`.

use toml_edit::{TableLike, Value};

use super::types::*;
use super::values::{Entry, Located, Pos, Reader};

pub(super) const TRANSITION_KEYS: &[&str] = &["on", "when", "do"];

/// The control keys of one task as written, with positions for the cross-checks.
#[derive(Debug, Clone, Default)]
pub(super) struct ControlDraft {
    pub next: Vec<TransitionDraft>,
    pub join: Option<Located<Join>>,
    pub max_iterations: Option<u32>,
    pub for_each: Option<Located<ForEach>>,
    pub for_each_concurrency: Option<u32>,
    pub compensate: Option<String>,
    /// Every control key the task writes, where its key is (for the cross-checks).
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
    for e in r.entries(table, at) {
        match e.name {
            "on" => on = read_on(r, &e),
            "when" => when = r.located_string(&e),
            "do" => {
                targets = r.string_array(&e);
                if targets.as_ref().is_some_and(Vec::is_empty) {
                    r.error(e.at, "`do` must name at least one task");
                }
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
    // A bad `on` is reported above; the edge is kept so its targets do not look unreached
    // (the workflow is discarded anyway).
    Some(TransitionDraft { on: on.unwrap_or(TransitionOn::Always), when, targets: targets? })
}

fn read_on(r: &mut Reader, e: &Entry) -> Option<TransitionOn> {
    let choices = TransitionOn::ALL.map(|on| (on.as_str(), on));
    super::parse::read_choice(r, e, &choices)
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
        // The same caps as items rendered at run time (count and bytes).
        match crate::model::fanout::items_from_list(array.iter().map(json_of).collect()) {
            Ok(items) => ForEach::List(items),
            Err(message) => {
                r.error(e.at, message);
                return None;
            }
        }
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
    if !ok {
        return None;
    }
    // The combinations pass the same caps as any other items.
    if let Err(message) = crate::model::fanout::matrix_items(&axes) {
        r.error(e.at, message);
        return None;
    }
    Some(axes)
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Result<Workflow, crate::config::Diagnostics> {
        super::super::parse(Path::new("wf.toml"), text)
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(d) => d.items.iter().map(|i| format!("{}:{}: {}", i.line, i.col, i.message)).collect(),
        }
    }

    #[test]
    fn every_key_is_read_into_the_task() {
        let text = "[jobs.j.tasks.a]\nrun = 'x'\ncompensate = 'undo'\nmax_iterations = 7\n\
                    next = [{ on = 'success', when = \"outputs.v == 'ok'\", do = ['b', 'c', 'b'] }, { on = 'failure', do = ['c'] }]\n\
                    [jobs.j.tasks.b]\nrun = 'x'\nfor_each = { os = ['linux', 'mac'], n = [1, 2.5] }\nnext = [{ on = 'always', do = ['c'] }]\n\
                    [jobs.j.tasks.c]\nrun = 'x'\njoin = 2\nfor_each = ['p', 3, true]\nfor_each_concurrency = 4\n";
        let wf = parse(text).expect("valid");
        let [a, b, c] = &wf.jobs[0].tasks[..] else { panic!("three tasks") };
        assert_eq!(a.compensate.as_deref(), Some("undo"));
        assert_eq!(a.max_iterations, 7);
        assert_eq!(
            a.next,
            [
                Transition {
                    on: TransitionOn::Success,
                    when: Some("outputs.v == 'ok'".into()),
                    targets: vec!["b".into(), "c".into()]
                },
                Transition { on: TransitionOn::Failure, when: None, targets: vec!["c".into()] },
            ]
        );
        assert_eq!(
            b.for_each,
            Some(ForEach::Matrix(vec![
                ("os".into(), vec!["linux".into(), "mac".into()]),
                ("n".into(), vec![serde_json::json!(1), serde_json::json!(2.5)]),
            ]))
        );
        assert_eq!((b.max_iterations, b.join, b.compensate.as_deref()), (DEFAULT_MAX_ITERATIONS, None, None));
        assert_eq!(c.join, Some(Join::Count(2)));
        assert_eq!(c.for_each, Some(ForEach::List(vec!["p".into(), serde_json::json!(3), serde_json::json!(true)])));
        assert_eq!(c.for_each_concurrency, Some(4));
    }

    #[test]
    fn array_of_tables_and_templates_work_too() {
        let text = "[jobs.j.tasks.list]\nrun = 'x'\n[jobs.j.tasks.each]\nneeds = ['list']\n\
                    for_each = '{{ tasks.list.outputs.xs }}'\nargs = ['echo', '{{ item }} {{ item_index }}']\n\
                    [[jobs.j.tasks.each.next]]\non = 'always'\ndo = ['done']\n[jobs.j.tasks.done]\nrun = 'x'\njoin = 'all'\n";
        let wf = parse(text).expect("valid");
        let each = wf.jobs[0].task("each").expect("each");
        assert_eq!(each.for_each, Some(ForEach::Template("{{ tasks.list.outputs.xs }}".into())));
        assert_eq!(each.next, [Transition { on: TransitionOn::Always, when: None, targets: vec!["done".into()] }]);
        assert_eq!(wf.jobs[0].task("done").expect("done").join, Some(Join::All));
    }

    #[test]
    fn bad_values_are_reported_with_positions() {
        let t = |extra: &str| format!("[jobs.j.tasks.t]\nrun = \"x\"\n{extra}\n[jobs.j.tasks.u]\nrun = \"x\"\n");
        let table: &[(&str, &str)] = &[
            ("max_iterations = 0", "3:18: `max_iterations` must be an integer from 1 to 10000"),
            ("max_iterations = 10001", "3:18: `max_iterations` must be an integer from 1 to 10000"),
            (
                "for_each = [1]\nfor_each_concurrency = 0",
                "4:24: `for_each_concurrency` must be an integer of at least 1",
            ),
            ("for_each_concurrency = 2", "3:1: `for_each_concurrency` needs `for_each` in task `t`"),
            ("for_each = { os = [] }", "3:19: matrix axis `os` must be a non-empty array of values"),
            ("for_each = { os = 'linux' }", "3:19: matrix axis `os` must be a non-empty array of values"),
            ("for_each = {}", "3:12: a `for_each` matrix needs at least one axis"),
            (
                "for_each = { a = [1,2,3,4,5,6,7,8,9,10], b = [1,2,3,4,5,6,7,8,9,10], c = [1,2,3,4,5,6,7,8,9,10], d = [1,2,3,4,5,6,7,8,9,10], e = [1,2,3,4,5,6,7,8,9,10], f = [1,2] }",
                "3:12: for_each: 200000 items, more than the 100000 one task may fan out to",
            ),
            (
                "for_each = 3",
                "3:12: `for_each` must be a template string, an array of items, or a matrix table of arrays",
            ),
            ("compensate = ' '", "3:14: `compensate` must not be empty"),
            ("compensate = 1", "3:14: `compensate` must be a string"),
            ("join = 0", "3:8: `join` must be \"all\" or a number of sources of at least 1"),
            ("join = 'most'", "3:8: `join` must be \"all\" or a number of sources of at least 1"),
            ("next = 'u'", "3:8: `next` must be an array of transitions"),
            ("next = ['u']", "3:9: each entry of `next` must be a table"),
            (
                "next = [{ on = 'sometimes', do = ['u'] }]",
                "3:16: `on` must be one of: success, failure, always (not `sometimes`)",
            ),
            ("next = [{ do = ['u'] }]", "3:9: a transition needs `on` (success, failure or always)"),
            ("next = [{ on = 'success' }]", "3:9: a transition needs `do` (the tasks it starts"),
            ("next = [{ on = 'success', do = [] }]", "3:32: `do` must name at least one task"),
            (
                "next = [{ on = 'success', do = ['u'], if = 'x' }]",
                "3:39: unknown key `if` in a transition (expected one of: on, when, do)",
            ),
        ];
        for (extra, want) in table {
            let errs = errors(&t(extra));
            assert!(errs.iter().any(|e| e.starts_with(want)), "{extra}: expected `{want}` in {errs:?}");
        }
    }

    #[test]
    fn cross_task_problems_are_reported_at_once() {
        let text = r#"[jobs.j.tasks.a]
run = "x"
next = [{ on = "success", do = ["b", "zz"] }, { on = "failure", when = "outputs.v ==", do = ["c"] }]
[jobs.j.tasks.b]
run = "x"
join = 2
[jobs.j.tasks.c]
run = "x"
needs = ["a"]
[jobs.j.tasks.d]
run = "x"
join = "all"
"#;
        assert_eq!(
            errors(text),
            [
                "3:38: unknown task `zz` in `do` of task `a` (job `j` has: a, b, c, d)",
                "3:72: bad expression in `when`: syntax error: unexpected end of input, expected expression (in <expression>:1)",
                "3:94: task `c` has `needs` and is a `do` target of task `a`: a task may be reached by `needs` or by transitions, not both",
                "6:8: `join = 2` on task `b`, which has 1 source task(s): a",
                "12:8: `join` on task `d`, which is the target of no transition (`join` counts arrivals through `next`)",
            ]
        );
    }

    #[test]
    fn a_job_where_nothing_can_start_is_an_error_but_a_transition_cycle_is_not() {
        let cycle = "[jobs.j.tasks.a]\nrun = 'x'\nnext = [{ on = 'success', do = ['b'] }]\n\
                     [jobs.j.tasks.b]\nrun = 'x'\nnext = [{ on = 'failure', do = ['a'] }]\n";
        assert_eq!(
            errors(cycle),
            [
                "1:15: job `j` has no entry task: every task has `needs` or is the target of a transition, so nothing starts"
            ]
        );
        let entry = format!("[jobs.j.tasks.start]\nrun = 'x'\nnext = [{{ on = 'success', do = ['a'] }}]\n{cycle}");
        assert_eq!(errors(&entry), Vec::<String>::new(), "a loop entered from an entry task is fine");
    }

    #[test]
    fn templates_and_whens_may_use_tasks_upstream_through_transitions() {
        let text = r#"[jobs.j.tasks.write]
run = "x"
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.review]
args = ["{{ tasks.write.outputs.draft }}", "{{ tasks.revise.outputs.draft }}"]
next = [{ on = "success", when = "outputs.verdict != 'ok' and attempt < 3 and exit_code == 0 and tasks.review.outputs.verdict and tasks.write.exit_code == 0", do = ["revise"] }]
[jobs.j.tasks.revise]
run = "x"
next = [{ on = "success", do = ["review"] }]
[jobs.j.tasks.other]
args = ["{{ tasks.review.outputs.verdict }}"]
next = [{ on = "success", when = "tasks.write.exit_code == 0 or foo", do = ["write2"] }]
[jobs.j.tasks.write2]
run = "x"
"#;
        assert_eq!(
            errors(text),
            [
                "11:9: template refers to task `review`, which `other` does not depend on",
                "12:34: `when` refers to task `write`, which `other` does not depend on",
                "12:34: unknown variable `foo` in `when` (available: outputs, exit_code, attempt, params, tasks, job)",
            ]
        );
    }

    #[test]
    fn item_is_for_fanned_out_tasks_and_for_each_templates_are_checked() {
        let text = r#"[jobs.j.tasks.list]
run = "x"
[jobs.j.tasks.each]
needs = ["list"]
for_each = "{{ tasks.list.outputs.xs }} {{ item }}"
args = ["{{ item.os }}", "{{ item_index }}"]
[jobs.j.tasks.plain]
args = ["{{ item_index }}"]
[jobs.j.tasks.bad]
for_each = "{{ tasks.plain.outputs.xs"
run = "x"
[jobs.j.tasks.far]
for_each = "{{ tasks.list.outputs.xs }}"
run = "x"
"#;
        let errs = errors(text);
        assert_eq!(
            errs[..3],
            [
                "5:12: `item` has no value in `for_each` itself, only in the task's other templates",
                "8:9: `item_index` has a value only in a task with `for_each` (task `plain` has none)",
                "10:12: bad template in `for_each`: syntax error: unexpected end of input, expected end of variable block (in <string>:1)",
            ]
        );
        assert_eq!(errs[3], "13:12: template refers to task `list`, which `far` does not depend on");
        assert_eq!(errs.len(), 4, "{errs:?}");
    }
}
