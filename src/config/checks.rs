//! Checks that span several tasks of a job: `needs` names, `needs` cycles, and what templates
//! refer to. Run on drafts so each problem keeps the position it was written at.

use std::collections::{BTreeSet, HashSet};

use super::parse::{DraftCommand, JobDraft, TaskDraft, TaskFields, merged_env};
use super::template;
use super::values::{Located, Reader};

/// minijinja's default global functions; using them in a template is fine.
const BUILTIN_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug"];

pub(super) fn check_job(r: &mut Reader, job: &JobDraft, defaults: &TaskFields) {
    check_needs_names(r, job);
    let graph = NeedsGraph::new(&job.tasks);
    for cycle in graph.cycles() {
        let names: Vec<&str> = cycle.iter().chain(cycle.first()).map(|&i| graph.name(i)).collect();
        r.error(job.tasks[cycle[0]].at, format!("`needs` cycle: {}", names.join(" -> ")));
    }
    for (i, task) in job.tasks.iter().enumerate() {
        let has_models = task.fields.retry.models.as_ref().or(defaults.retry.models.as_ref()).is_some();
        let scope = Scope { job, task: &task.name, upstream: graph.upstream_of(i), has_models };
        for (label, text) in templates_of(task, defaults) {
            check_template(r, &scope, &label, text);
        }
    }
}

fn check_needs_names(r: &mut Reader, job: &JobDraft) {
    let known: Vec<&str> = job.tasks.iter().map(|t| t.name.as_str()).collect();
    for task in &job.tasks {
        for need in task.needs.iter().filter(|n| !known.contains(&n.value.as_str())) {
            let msg = format!(
                "unknown task `{}` in `needs` of task `{}` (job `{}` has: {})",
                need.value,
                task.name,
                job.name,
                known.join(", ")
            );
            r.error(need.at, msg);
        }
    }
}

/// Tasks as indices in file order; an edge `a -> b` means `a` needs `b`.
struct NeedsGraph<'a> {
    names: Vec<&'a str>,
    edges: Vec<Vec<usize>>,
}

impl<'a> NeedsGraph<'a> {
    fn new(tasks: &'a [TaskDraft]) -> Self {
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        let edges = tasks
            .iter()
            .map(|t| {
                let mut out: Vec<usize> =
                    t.needs.iter().filter_map(|n| names.iter().position(|name| *name == n.value)).collect();
                out.dedup();
                out
            })
            .collect();
        NeedsGraph { names, edges }
    }

    fn name(&self, i: usize) -> &'a str {
        self.names[i]
    }

    /// Each cycle once, rotated to start at its task that comes first in the file.
    fn cycles(&self) -> Vec<Vec<usize>> {
        let mut state = vec![Visit::New; self.names.len()];
        let mut stack = Vec::new();
        let mut found = Vec::new();
        for i in 0..self.names.len() {
            if state[i] == Visit::New {
                self.visit(i, &mut state, &mut stack, &mut found);
            }
        }
        let mut unique: Vec<Vec<usize>> = Vec::new();
        for mut cycle in found {
            let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
            cycle.rotate_left(first);
            if !unique.contains(&cycle) {
                unique.push(cycle);
            }
        }
        unique
    }

    fn visit(&self, i: usize, state: &mut [Visit], stack: &mut Vec<usize>, found: &mut Vec<Vec<usize>>) {
        state[i] = Visit::OnStack;
        stack.push(i);
        for &j in &self.edges[i] {
            match state[j] {
                Visit::New => self.visit(j, state, stack, found),
                Visit::OnStack => {
                    let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                    found.push(stack[start..].to_vec());
                }
                Visit::Done => {}
            }
        }
        stack.pop();
        state[i] = Visit::Done;
    }

    /// Names of every task `i` transitively needs. Costs the ancestry, not the job: a job may
    /// have 100k independent tasks.
    fn upstream_of(&self, i: usize) -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::new();
        let mut todo = self.edges[i].clone();
        while let Some(j) = todo.pop() {
            if seen.insert(self.names[j]) {
                todo.extend(&self.edges[j]);
            }
        }
        seen
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    OnStack,
    Done,
}

/// What a template of one task may refer to.
struct Scope<'a> {
    job: &'a JobDraft,
    task: &'a str,
    upstream: BTreeSet<&'a str>,
    /// `retry.models` is set: `{{ model }}` has a value.
    has_models: bool,
}

/// Every templated text of a task after merging defaults, labelled for messages.
fn templates_of<'a>(task: &'a TaskDraft, defaults: &'a TaskFields) -> Vec<(String, &'a Located<String>)> {
    let mut out: Vec<(String, &Located<String>)> =
        merged_env(task, defaults).into_iter().map(|(k, v)| (format!("env.{k}"), v)).collect();
    if let Some(DraftCommand::Args(args)) = &task.command {
        out.extend(args.iter().enumerate().map(|(i, a)| (format!("args[{i}]"), a)));
    }
    if let Some(stdin) = &task.stdin {
        out.push(("stdin".to_string(), stdin));
    }
    if let Some((key, _)) = &task.cache {
        out.push(("cache.key".to_string(), key));
    }
    out
}

fn check_template(r: &mut Reader, scope: &Scope, label: &str, text: &Located<String>) {
    let vars: HashSet<String> = match template::check_syntax(&text.value) {
        Ok(vars) => vars,
        Err(err) => {
            r.error(text.at, format!("bad template in `{label}`: {err}"));
            return;
        }
    };
    let sorted: BTreeSet<&String> = vars.iter().collect();
    for var in sorted {
        let segments: Vec<&str> = var.split('.').collect();
        if let Some(problem) = reference_problem(scope, &segments) {
            r.error(text.at, problem);
        } else if label == "cache.key"
            && let Some(secret) = secret_in(scope, &segments)
        {
            r.error(
                text.at,
                format!("`cache.key` uses secret param `{secret}`: cache keys are stored in the state dir"),
            );
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

fn reference_problem(scope: &Scope, segments: &[&str]) -> Option<String> {
    match segments {
        // A bare `params`/`tasks`/`job` is a dynamic lookup (`params[x]`): checked at render time.
        ["params"] | ["tasks"] | ["job"] => None,
        ["params", name, ..] => {
            (!scope.job.params.contains_key(*name)).then(|| format!("unknown param `{name}` (declare it in `params`)"))
        }
        ["tasks", name, rest @ ..] => task_reference_problem(scope, name, rest),
        ["job", "run_id" | "name", ..] => None,
        ["job", field, ..] => Some(format!("unknown `job.{field}` (available: job.run_id, job.name)")),
        ["item", ..] => Some("`item` is not available yet (for_each, SPEC §2.2)".to_string()),
        ["model"] if scope.has_models => None,
        ["model", ..] => Some(format!("`model` has a value only with `retry.models` (task `{}` has none)", scope.task)),
        [name, ..] if BUILTIN_GLOBALS.contains(name) => None,
        [name, ..] => Some(format!("unknown variable `{name}` in template (available: params, tasks, job)")),
        [] => None,
    }
}

fn task_reference_problem(scope: &Scope, name: &str, rest: &[&str]) -> Option<String> {
    if !scope.upstream.contains(name) {
        let exists = scope.job.tasks.iter().any(|t| t.name == name);
        let note = if exists { String::new() } else { format!(" (job `{}` has no task `{name}`)", scope.job.name) };
        return Some(format!("template refers to task `{name}`, which `{}` does not depend on{note}", scope.task));
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
                "5:57: `item` is not available yet (for_each, SPEC §2.2)",
                "5:75: unknown `job.owner` (available: job.run_id, job.name)",
                "5:98: unknown variable `foo` in template (available: params, tasks, job)",
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
