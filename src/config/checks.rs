//! Checks that span several tasks of a job: `needs` names and cycles, transition targets,
//! joins, entry tasks, and what templates and `when` expressions refer to. Run on drafts so each
//! problem keeps the position it was written at, over the one [`WorkflowGraph`] of the job.

use std::collections::{BTreeSet, HashSet};

use super::parse::{DraftCommand, JobDraft, TaskDraft, TaskFields, merged_env};
use super::template;
use super::types::{DEFAULT_MAX_ITERATIONS, ForEach, Join};
use super::values::{Located, Reader};
use crate::model::workflow_graph::{TaskNode, WorkflowGraph};

/// minijinja's default global functions; using them in a template is fine.
const BUILTIN_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug"];

/// At most this many `needs` cycles are spelled out per job; the rest are counted.
const MAX_CYCLES_SHOWN: usize = 10;
/// A cycle's path names at most this many tasks (its head and its end).
const MAX_CYCLE_NAMES: usize = 12;
/// "unknown task" lists at most this many of the job's tasks.
const MAX_NAMES_LISTED: usize = 10;

/// Linear in tasks plus `needs` and transition entries (a 10,000-task chain or cycle validates
/// in milliseconds); a template naming a task that is not a direct upstream costs that task's
/// ancestry once.
pub(super) fn check_job(r: &mut Reader, job: &JobDraft, defaults: &TaskFields) {
    let graph = WorkflowGraph::new(job.tasks.iter().map(node_of).collect());
    let names: Vec<&str> = graph.names().iter().map(String::as_str).collect();
    check_needs_names(r, job, &graph, &names);
    check_transitions(r, job, &graph, &names);
    check_joins(r, job, &graph);
    let (cycles, more) = needs_cycles(&graph, MAX_CYCLES_SHOWN);
    for cycle in &cycles {
        r.error(job.tasks[cycle[0]].at, format!("`needs` cycle: {}", cycle_path(&graph, cycle)));
    }
    if more > 0 {
        let at = job.tasks[cycles[0][0]].at;
        r.error(at, format!("… and {more} more `needs` cycle(s) in job `{}`", job.name));
    }
    if cycles.is_empty() && !job.tasks.is_empty() && graph.entry_tasks().is_empty() {
        r.error(
            job.tasks[0].at,
            format!(
                "job `{}` has no entry task: every task has `needs` or is the target of a transition, so nothing starts",
                job.name
            ),
        );
    }
    let mut ancestry = Ancestry::new(graph.len());
    for (i, task) in job.tasks.iter().enumerate() {
        let has_models = task.fields.retry.models.as_ref().or(defaults.retry.models.as_ref()).is_some();
        for (label, text) in templates_of(task, defaults) {
            let mut scope = Scope { job, graph: &graph, task: i, ancestry: &mut ancestry, has_models, label: &label };
            check_template(r, &mut scope, &text);
        }
        for when in task.control.next.iter().filter_map(|t| t.when.as_ref()) {
            let mut scope = Scope { job, graph: &graph, task: i, ancestry: &mut ancestry, has_models, label: "when" };
            check_when(r, &mut scope, when);
        }
    }
}

/// A draft task as the graph sees it.
fn node_of(task: &TaskDraft) -> TaskNode {
    TaskNode {
        name: task.name.clone(),
        needs: task.needs.iter().map(|n| n.value.clone()).collect(),
        next: task.control.next.iter().map(super::control::TransitionDraft::finish).collect(),
        join: task.control.join.as_ref().map(|j| j.value),
        gated: task.wait_for.is_some(),
        max_iterations: task.control.max_iterations.unwrap_or(DEFAULT_MAX_ITERATIONS),
        fanned_out: task.control.for_each.is_some(),
        has_compensation: task.control.compensate.is_some(),
    }
}

fn check_needs_names(r: &mut Reader, job: &JobDraft, graph: &WorkflowGraph, names: &[&str]) {
    for task in &job.tasks {
        for need in task.needs.iter().filter(|n| graph.index(&n.value).is_none()) {
            let msg = format!(
                "unknown task `{}` in `needs` of task `{}` (job `{}` has: {})",
                need.value,
                task.name,
                job.name,
                some_of(names, MAX_NAMES_LISTED)
            );
            r.error(need.at, msg);
        }
    }
}

/// Every `do` target is a task of the job, and one that is not also reached through `needs`.
fn check_transitions(r: &mut Reader, job: &JobDraft, graph: &WorkflowGraph, names: &[&str]) {
    for task in &job.tasks {
        for target in task.control.next.iter().flat_map(|t| &t.targets) {
            let Some(j) = graph.index(&target.value) else {
                let msg = format!(
                    "unknown task `{}` in `do` of task `{}` (job `{}` has: {})",
                    target.value,
                    task.name,
                    job.name,
                    some_of(names, MAX_NAMES_LISTED)
                );
                r.error(target.at, msg);
                continue;
            };
            if !job.tasks[j].needs.is_empty() {
                r.error(
                    target.at,
                    format!(
                        "task `{}` has `needs` and is a `do` target of task `{}`: a task may be reached by `needs` or by transitions, not both",
                        target.value, task.name
                    ),
                );
            }
        }
    }
}

/// A `join` sits on a transition target and asks for no more sources than it has.
fn check_joins(r: &mut Reader, job: &JobDraft, graph: &WorkflowGraph) {
    for (i, task) in job.tasks.iter().enumerate() {
        let Some(join) = &task.control.join else { continue };
        let sources = graph.sources(i);
        if sources.is_empty() {
            r.error(
                join.at,
                format!(
                    "`join` on task `{}`, which is the target of no transition (`join` counts arrivals through `next`)",
                    task.name
                ),
            );
        } else if let Join::Count(n) = join.value
            && n as usize > sources.len()
        {
            let names: Vec<&str> = sources.iter().map(|&s| graph.name(s)).collect();
            r.error(
                join.at,
                format!(
                    "`join = {n}` on task `{}`, which has {} source task(s): {}",
                    task.name,
                    sources.len(),
                    some_of(&names, MAX_NAMES_LISTED)
                ),
            );
        }
    }
}

/// `a, b, c` — or the first `max` and how many more.
fn some_of(names: &[&str], max: usize) -> String {
    match names.len().checked_sub(max) {
        Some(more) if more > 0 => format!("{}, … {more} more", names[..max].join(", ")),
        _ => names.join(", "),
    }
}

/// The first `max` cycles of `needs`, each rotated to start at its task that comes first in the
/// file, and how many more there are. One depth-first pass with an explicit stack (a
/// 20,000-task chain must not overflow the thread's stack): each edge back onto the stack
/// closes one distinct cycle, and only the shown ones are copied out. Transition cycles are
/// allowed and not looked at.
fn needs_cycles(graph: &WorkflowGraph, max: usize) -> (Vec<Vec<usize>>, usize) {
    let mut state = vec![Visit::New; graph.len()];
    // The path being explored, and for each task on it the next of its edges to follow.
    let mut path: Vec<usize> = Vec::new();
    let mut next_edge: Vec<usize> = vec![0; graph.len()];
    let mut position: Vec<usize> = vec![0; graph.len()];
    let (mut shown, mut more) = (Vec::new(), 0);
    for root in 0..graph.len() {
        if state[root] != Visit::New {
            continue;
        }
        state[root] = Visit::OnStack;
        position[root] = 0;
        path.push(root);
        while let Some(&i) = path.last() {
            let Some(&j) = graph.needs(i).get(next_edge[i]) else {
                state[i] = Visit::Done;
                path.pop();
                continue;
            };
            next_edge[i] += 1;
            match state[j] {
                Visit::New => {
                    state[j] = Visit::OnStack;
                    position[j] = path.len();
                    path.push(j);
                }
                Visit::OnStack if shown.len() < max => {
                    let mut cycle = path[position[j]..].to_vec();
                    let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
                    cycle.rotate_left(first);
                    shown.push(cycle);
                }
                Visit::OnStack => more += 1,
                Visit::Done => {}
            }
        }
    }
    (shown, more)
}

/// `a -> b -> c -> a`, with the middle of a long cycle elided.
fn cycle_path(graph: &WorkflowGraph, cycle: &[usize]) -> String {
    let mut names: Vec<&str> = cycle.iter().chain(cycle.first()).map(|&i| graph.name(i)).collect();
    if names.len() > MAX_CYCLE_NAMES {
        let tail = names.split_off(names.len() - 2);
        let elided = format!("… ({} more) …", names.len() - (MAX_CYCLE_NAMES - 2));
        names.truncate(MAX_CYCLE_NAMES - 2);
        return format!("{} -> {elided} -> {}", names.join(" -> "), tail.join(" -> "));
    }
    names.join(" -> ")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    OnStack,
    Done,
}

/// Answers "is task `j` upstream of task `i` (through `needs` or transitions)?" by a search
/// from `i` that stops at `j`. The visited marks are one array of generation stamps reused by
/// every search, so a search costs what it visits, never the size of the job; the marks also
/// make it safe on transition cycles.
struct Ancestry {
    stamp: Vec<u32>,
    generation: u32,
    todo: Vec<usize>,
}

impl Ancestry {
    fn new(tasks: usize) -> Self {
        Ancestry { stamp: vec![0; tasks], generation: 0, todo: Vec::new() }
    }

    fn is_upstream(&mut self, graph: &WorkflowGraph, i: usize, j: usize) -> bool {
        if graph.direct_upstream(i).any(|k| k == j) {
            return true;
        }
        self.generation += 1;
        self.todo.clear();
        self.todo.extend(graph.direct_upstream(i));
        while let Some(k) = self.todo.pop() {
            if k == j {
                return true;
            }
            if self.stamp[k] != self.generation {
                self.stamp[k] = self.generation;
                self.todo.extend(graph.direct_upstream(k));
            }
        }
        false
    }
}

/// What a template (or a `when`) of one task may refer to.
struct Scope<'s, 'a> {
    job: &'a JobDraft,
    graph: &'s WorkflowGraph,
    task: usize,
    ancestry: &'s mut Ancestry,
    /// `retry.models` is set: `{{ model }}` has a value.
    has_models: bool,
    /// What is checked: `env.X`, `args[0]`, `stdin`, `cache.key`, `for_each` or `when`.
    label: &'s str,
}

impl Scope<'_, '_> {
    /// A `when` may also read its own task (`tasks.T` of the run that ends).
    fn depends_on(&mut self, name: &str) -> bool {
        self.graph.index(name).is_some_and(|j| {
            (self.label == "when" && j == self.task) || self.ancestry.is_upstream(self.graph, self.task, j)
        })
    }

    fn task_name(&self) -> &str {
        self.graph.name(self.task)
    }

    /// `item` and `item_index` have values: a fanned-out task, outside its own `for_each`.
    fn has_item(&self) -> bool {
        self.graph.is_fanned_out(self.task) && self.label != "for_each"
    }
}

/// Every templated text of a task after merging defaults, labelled for messages.
fn templates_of(task: &TaskDraft, defaults: &TaskFields) -> Vec<(String, Located<String>)> {
    let mut out: Vec<(String, Located<String>)> =
        merged_env(task, defaults).into_iter().map(|(k, v)| (format!("env.{k}"), v.clone())).collect();
    if let Some(DraftCommand::Args(args)) = &task.command {
        out.extend(args.iter().enumerate().map(|(i, a)| (format!("args[{i}]"), a.clone())));
    }
    if let Some(stdin) = &task.stdin {
        out.push(("stdin".to_string(), stdin.clone()));
    }
    if let Some((key, _)) = &task.cache {
        out.push(("cache.key".to_string(), key.clone()));
    }
    if let Some(Located { value: ForEach::Template(text), at }) = &task.control.for_each {
        out.push(("for_each".to_string(), Located { value: text.clone(), at: *at }));
    }
    out
}

fn check_template(r: &mut Reader, scope: &mut Scope, text: &Located<String>) {
    let vars: HashSet<String> = match template::check_syntax(&text.value) {
        Ok(vars) => vars,
        Err(err) => {
            r.error(text.at, format!("bad template in `{}`: {err}", scope.label));
            return;
        }
    };
    for name in template::unknown_filters(&text.value, false) {
        r.error(text.at, format!("bad template in `{}`: unknown filter `{name}`", scope.label));
    }
    let sorted: BTreeSet<&String> = vars.iter().collect();
    for var in sorted {
        let segments: Vec<&str> = var.split('.').collect();
        if let Some(problem) = reference_problem(scope, &segments) {
            r.error(text.at, problem);
        } else if scope.label == "cache.key"
            && let Some(secret) = secret_in(scope, &segments)
        {
            r.error(
                text.at,
                format!("`cache.key` uses secret param `{secret}`: cache keys are stored in the state dir"),
            );
        }
    }
}

/// A `when` is a bare expression over the ending run (`outputs`, `exit_code`, `attempt`) and
/// what templates see.
fn check_when(r: &mut Reader, scope: &mut Scope, when: &Located<String>) {
    let vars = match template::check_expression(&when.value) {
        Ok(vars) => vars,
        Err(err) => {
            let hint =
                if template::is_templated(&when.value) { " (write a bare expression, without `{{ }}`)" } else { "" };
            r.error(when.at, format!("bad expression in `when`: {err}{hint}"));
            return;
        }
    };
    for name in template::unknown_filters(&when.value, true) {
        r.error(when.at, format!("bad expression in `when`: unknown filter `{name}`"));
    }
    let sorted: BTreeSet<&String> = vars.iter().collect();
    for var in sorted {
        let segments: Vec<&str> = var.split('.').collect();
        if matches!(segments.first(), Some(&("outputs" | "exit_code" | "attempt"))) {
            continue;
        }
        if let Some(problem) = reference_problem(scope, &segments) {
            r.error(when.at, problem);
        }
    }
}

/// The secret param a reference reads, if any (a bare `params` may read any of them).
fn secret_in<'a>(scope: &'a Scope, segments: &[&str]) -> Option<&'a str> {
    let secret = |name: &str| scope.job.params.get(name).is_some_and(|p| p.secret);
    match segments {
        ["params"] => scope.job.params.keys().map(String::as_str).find(|name| secret(name)),
        ["params", name, ..] => scope.job.params.get_key_value(*name).filter(|_| secret(name)).map(|(k, _)| k.as_str()),
        _ => None,
    }
}

fn reference_problem(scope: &mut Scope, segments: &[&str]) -> Option<String> {
    match segments {
        // A bare `params`/`tasks`/`job` is a dynamic lookup (`params[x]`): checked at render time.
        ["params"] | ["tasks"] | ["job"] => None,
        ["params", name, ..] => {
            (!scope.job.params.contains_key(*name)).then(|| format!("unknown param `{name}` (declare it in `params`)"))
        }
        ["tasks", name, rest @ ..] => task_reference_problem(scope, name, rest),
        ["job", "run_id" | "name", ..] => None,
        ["job", field, ..] => Some(format!("unknown `job.{field}` (available: job.run_id, job.name)")),
        ["item", ..] | ["item_index", ..] if scope.has_item() => None,
        ["item", ..] | ["item_index", ..] if scope.label == "for_each" => {
            Some(format!("`{}` has no value in `for_each` itself, only in the task's other templates", segments[0]))
        }
        ["item", ..] | ["item_index", ..] => Some(format!(
            "`{}` has a value only in a task with `for_each` (task `{}` has none)",
            segments[0],
            scope.task_name()
        )),
        ["model"] if scope.has_models => None,
        ["model", ..] => {
            Some(format!("`model` has a value only with `retry.models` (task `{}` has none)", scope.task_name()))
        }
        [name, ..] if BUILTIN_GLOBALS.contains(name) => None,
        [name, ..] if scope.label == "when" => Some(format!(
            "unknown variable `{name}` in `when` (available: outputs, exit_code, attempt, params, tasks, job)"
        )),
        [name, ..] => Some(format!("unknown variable `{name}` in template (available: params, tasks, job)")),
        [] => None,
    }
}

fn task_reference_problem(scope: &mut Scope, name: &str, rest: &[&str]) -> Option<String> {
    if !scope.depends_on(name) {
        let exists = scope.job.tasks.iter().any(|t| t.name == name);
        let note = if exists { String::new() } else { format!(" (job `{}` has no task `{name}`)", scope.job.name) };
        let what = if scope.label == "when" { "`when`" } else { "template" };
        return Some(format!("{what} refers to task `{name}`, which `{}` does not depend on{note}", scope.task_name()));
    }
    match rest {
        [] | ["outputs", ..] | ["exit_code"] => None,
        [other, ..] => {
            Some(format!("`tasks.{name}.{other}` does not exist (a task exposes `outputs` and `exit_code`)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn errors(text: &str) -> Vec<String> {
        match super::super::parse(Path::new("wf.toml"), text) {
            Ok(_) => Vec::new(),
            Err(d) => d.items.iter().map(|i| format!("{}:{}: {}", i.line, i.col, i.message)).collect(),
        }
    }

    #[test]
    fn needs_cycle_reported_once_at_first_task() {
        let text = "[jobs.j.tasks.a]\nrun = \"x\"\nneeds = [\"c\"]\n\
                    [jobs.j.tasks.b]\nrun = \"x\"\nneeds = [\"a\"]\n\
                    [jobs.j.tasks.c]\nrun = \"x\"\nneeds = [\"b\"]\n";
        assert_eq!(errors(text), ["1:15: `needs` cycle: a -> c -> b -> a"]);
    }

    #[test]
    fn self_need_is_a_cycle() {
        let text = "[jobs.j.tasks.a]\nrun = \"x\"\nneeds = [\"a\"]\n";
        assert_eq!(errors(text), ["1:15: `needs` cycle: a -> a"]);
    }

    #[test]
    fn two_separate_cycles() {
        let text = "[jobs.j.tasks]\na = { run = \"x\", needs = [\"b\"] }\nb = { run = \"x\", needs = [\"a\"] }\n\
                    c = { run = \"x\", needs = [\"d\", \"a\"] }\nd = { run = \"x\", needs = [\"c\"] }\n";
        assert_eq!(errors(text), ["2:1: `needs` cycle: a -> b -> a", "4:1: `needs` cycle: c -> d -> c"]);
    }

    #[test]
    fn diamond_is_not_a_cycle() {
        let text = "[jobs.j.tasks]\na = { run = \"x\" }\nb = { run = \"x\", needs = [\"a\"] }\n\
                    c = { run = \"x\", needs = [\"a\"] }\nd = { args = [\"{{ tasks.a.exit_code }}\"], needs = [\"b\", \"c\"] }\n";
        assert_eq!(errors(text), Vec::<String>::new());
    }

    #[test]
    fn template_may_only_use_upstream_tasks() {
        let text = "[jobs.j.tasks.a]\nrun = \"x\"\n\
                    [jobs.j.tasks.b]\nrun = \"x\"\n\
                    [jobs.j.tasks.c]\nneeds = [\"a\"]\nargs = [\"{{ tasks.b.outputs.o }}\", \"{{ tasks.zz.outputs.o }}\"]\n";
        assert_eq!(
            errors(text),
            [
                "7:9: template refers to task `b`, which `c` does not depend on",
                "7:36: template refers to task `zz`, which `c` does not depend on (job `j` has no task `zz`)",
            ]
        );
    }

    #[test]
    fn template_names_are_checked() {
        let text = "[jobs.j]\nparams = { topic = \"rust\" }\n[jobs.j.tasks.t]\nrun = \"x\"\n\
                    env = { A = \"{{ params.topic }} {{ params.nope }}\", B = \"{{ item }}\", C = \"{{ job.owner }}\", D = \"{{ foo }}\", E = \"{{ range(3) | join(',') }} {{ job.run_id }}\" }\n";
        assert_eq!(
            errors(text),
            [
                "5:13: unknown param `nope` (declare it in `params`)",
                "5:57: `item` has a value only in a task with `for_each` (task `t` has none)",
                "5:75: unknown `job.owner` (available: job.run_id, job.name)",
                "5:98: unknown variable `foo` in template (available: params, tasks, job)",
            ]
        );
    }

    /// minijinja looks filters up only when it renders: a misspelt one passed `validate` and
    /// failed every run with `template_error` (found by a SPEC check).
    #[test]
    fn unknown_filters_are_reported_where_they_are() {
        let text = "[jobs.j.tasks.u]\nrun = \"true\"\n[jobs.j.tasks.t]\nneeds = [\"u\"]\nrun = \"x\"\n\
                    env = { A = \"{{ tasks.u.exit_code | nofilter }}\", B = \"{{ '|x' | upper }} {% if 1 | abs %}{% endif %}\" }\n\
                    stdin = \"{{ params | string | nosuch(1) }}{{ 'a' | nofilter }}\"\n\
                    next = [{ on = \"success\", when = \"exit_code | wrong == 0 and 'b|c' | length > 0\", do = [\"u2\"] }]\n\
                    [jobs.j.tasks.u2]\nrun = \"true\"\n";
        assert_eq!(
            errors(text),
            [
                "6:13: bad template in `env.A`: unknown filter `nofilter`",
                "7:9: bad template in `stdin`: unknown filter `nofilter`",
                "7:9: bad template in `stdin`: unknown filter `nosuch`",
                "8:34: bad expression in `when`: unknown filter `wrong`",
            ]
        );
    }

    #[test]
    fn template_syntax_errors() {
        let text = "[jobs.j.tasks.t]\nrun = \"x\"\nstdin = \"{{ oops\"\n";
        let errs = errors(text);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("3:9: bad template in `stdin`: syntax error"), "{errs:?}");
    }

    #[test]
    fn task_attributes_are_checked() {
        let text = "[jobs.j.tasks.a]\nrun = \"x\"\n[jobs.j.tasks.b]\nrun = \"x\"\nneeds = [\"a\"]\nstdin = \"{{ tasks.a.stdout }}\"\n";
        assert_eq!(errors(text), ["6:9: `tasks.a.stdout` does not exist (a task exposes `outputs` and `exit_code`)"]);
    }

    #[test]
    fn defaults_env_templates_are_checked_per_task() {
        let text = "[defaults]\nenv = { UP = \"{{ tasks.a.outputs.x }}\" }\n\
                    [jobs.j.tasks.a]\nrun = \"x\"\nenv = { UP = \"\" }\n\
                    [jobs.j.tasks.b]\nrun = \"x\"\nneeds = [\"a\"]\n\
                    [jobs.j.tasks.c]\nrun = \"x\"\n";
        assert_eq!(errors(text), ["2:14: template refers to task `a`, which `c` does not depend on"]);
    }

    #[test]
    fn a_cache_key_may_not_use_a_secret() {
        let text = "[jobs.j]\nparams = { token = { secret = true }, url = \"u\" }\n[jobs.j.tasks.t]\nrun = \"x\"\n\
                    cache = { key = \"{{ params.url }} {{ params.token }}\", ttl = \"1h\" }\nenv = { T = \"{{ params.token }}\" }\n";
        assert_eq!(
            errors(text),
            ["5:17: `cache.key` uses secret param `token`: cache keys are stored in the state dir"]
        );
    }

    #[test]
    fn run_is_never_templated() {
        assert_eq!(errors("[jobs.j.tasks.t]\nrun = \"echo {{ nope\"\n"), Vec::<String>::new());
    }
}
