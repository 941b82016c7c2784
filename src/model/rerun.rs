//! Running part of a job again, as pure decisions: which earlier runs `gaffer run FILE JOB --only
//! TASK` borrows its needs' outputs from, which task runs `gaffer retry j7 --from TASK` reopens,
//! and whether a job run's stored definition differs from the file in use (and may be switched
//! to it). The engine and the CLI (offline) carry them out; nothing here reads the store.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{JobDef, TaskDef};
use crate::model::TaskState;
use crate::model::graph::JobGraph;

/// What a retry does when the job run's definition differs from the workflow file in use
/// (`gaffer retry --definition stored|current`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefinitionChoice {
    /// Run it as it was started, with the definition stored with the job run.
    Stored,
    /// Switch the job run to the file in use now (recorded), then retry.
    Current,
}

impl DefinitionChoice {
    pub fn parse(text: &str) -> Result<DefinitionChoice, String> {
        match text {
            "stored" => Ok(DefinitionChoice::Stored),
            "current" => Ok(DefinitionChoice::Current),
            _ => Err(format!("`{text}` is not `stored` or `current`")),
        }
    }
}

/// A task run of the job from an earlier job run, as `--only` looks at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastRun<'a> {
    pub task: &'a str,
    pub task_run: u64,
    pub job_run: u64,
    pub state: TaskState,
}

/// The tasks of an `--only` job run, by task index of the job (file order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlyPlan {
    /// The task that runs.
    pub task: usize,
    /// Every task it (transitively) needs, with the succeeded earlier run whose outputs it takes.
    pub borrowed: Vec<(usize, Borrowed)>,
}

/// The earlier task run an `--only` run takes a need's outputs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Borrowed {
    pub task_run: u64,
    pub job_run: u64,
}

impl OnlyPlan {
    /// The tasks that get a task run in the new job run, in file order.
    pub fn tasks(&self) -> Vec<usize> {
        let mut tasks: Vec<usize> = self.borrowed.iter().map(|(i, _)| *i).chain([self.task]).collect();
        tasks.sort_unstable();
        tasks
    }
}

/// Why `--only` or `--from` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownTask {
        task: String,
        known: Vec<String>,
    },
    /// `--only`: these needs have never succeeded.
    NoSucceededRun {
        task: String,
        needs: Vec<String>,
    },
    /// `--from` on a job run that still has work going on.
    NotFinished {
        task: String,
        state: TaskState,
    },
    /// `--from`: a need of the task is not succeeded in this job run.
    NeedNotSucceeded {
        task: String,
        need: String,
        state: TaskState,
    },
    /// `--from`: a failure outside what would run again would stop the job run at once.
    FailedElsewhere {
        from: String,
        task: String,
        state: TaskState,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownTask { task, known } => write!(f, "no task `{task}` (the tasks are: {})", known.join(", ")),
            Refusal::NoSucceededRun { task, needs } => write!(
                f,
                "task `{task}` needs {}, which {} no succeeded run to take outputs from; run the whole job once, \
                 or `--only {}` first",
                quoted(needs),
                if needs.len() == 1 { "has" } else { "have" },
                needs[0]
            ),
            Refusal::NotFinished { task, state } => write!(
                f,
                "task `{task}` {}: --from works on a finished job run (wait for it, or cancel it first)",
                state.phrase()
            ),
            Refusal::NeedNotSucceeded { task, need, state } => {
                write!(f, "task `{task}` needs `{need}`, which {} in this job run: use --from {need}", state.phrase())
            }
            Refusal::FailedElsewhere { from, task, state } => write!(
                f,
                "task `{task}` {} and is not downstream of `{from}`: the job run would stop again at once; \
                 retry it too, or start from a task both depend on",
                state.phrase()
            ),
        }
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

fn index_of(graph: &JobGraph, task: &str) -> Result<usize, Refusal> {
    graph.index(task).ok_or_else(|| Refusal::UnknownTask { task: task.to_string(), known: graph.names.clone() })
}

/// `--only TASK`: the task runs alone; each task it (transitively) needs lends the outputs of
/// its latest succeeded run (the highest task run id). Refused, naming them, when some never
/// succeeded — templates over their outputs could not render.
pub fn only_plan(graph: &JobGraph, task: &str, past: &[PastRun]) -> Result<OnlyPlan, Refusal> {
    let i = index_of(graph, task)?;
    let mut needs = graph.ancestors(i);
    needs.sort_unstable();
    let mut latest: HashMap<&str, &PastRun> = HashMap::new();
    for r in past.iter().filter(|r| r.state == TaskState::Succeeded) {
        let best = latest.entry(r.task).or_insert(r);
        if r.task_run > best.task_run {
            *best = r;
        }
    }
    let mut borrowed = Vec::new();
    let mut missing = Vec::new();
    for need in needs {
        let name = &graph.names[need];
        match latest.get(name.as_str()) {
            Some(r) => borrowed.push((need, Borrowed { task_run: r.task_run, job_run: r.job_run })),
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(Refusal::NoSucceededRun { task: task.to_string(), needs: missing });
    }
    Ok(OnlyPlan { task: i, borrowed })
}

/// The job as one job run sees it: only the tasks it has task runs for (all of them, except
/// for an `--only` run), in file order. `keep` is closed under `needs` by construction.
pub fn slice_job(job: &JobDef, keep: &[&str]) -> JobDef {
    let keep: HashSet<&str> = keep.iter().copied().collect();
    let mut sliced = job.clone();
    sliced.tasks.retain(|t| keep.contains(t.name.as_str()));
    sliced
}

/// `retry j7 --from TASK`: the task and everything downstream of it (through `needs`), in file
/// order — they get a fresh series of attempts. Refused while anything in the run is still going
/// on, when a need of the task did not succeed, and when a dead or cancelled task outside that
/// set would make the job run stop again at once.
pub fn plan_from(graph: &JobGraph, states: &[TaskState], from: &str) -> Result<Vec<usize>, Refusal> {
    let i = index_of(graph, from)?;
    if let Some(t) = (0..states.len()).find(|&t| !states[t].is_terminal()) {
        return Err(Refusal::NotFinished { task: graph.names[t].clone(), state: states[t] });
    }
    if let Some(&need) = graph.needs(i).iter().find(|&&n| states[n] != TaskState::Succeeded) {
        return Err(Refusal::NeedNotSucceeded {
            task: from.to_string(),
            need: graph.names[need].clone(),
            state: states[need],
        });
    }
    let mut rerun = graph.descendants(i);
    rerun.push(i);
    rerun.sort_unstable();
    let elsewhere =
        (0..states.len()).find(|t| !rerun.contains(t) && matches!(states[*t], TaskState::Dead | TaskState::Cancelled));
    if let Some(t) = elsewhere {
        return Err(Refusal::FailedElsewhere {
            from: from.to_string(),
            task: graph.names[t].clone(),
            state: states[t],
        });
    }
    Ok(rerun)
}

/// What differs between the job as a job run stored it and the job in the file now, as far as
/// the run's own tasks go: a changed or removed task, or a job setting that changes how they run.
/// Tasks added since are not part of the run and are not listed; nor are hooks or the schedule.
///
/// `stored_dir` and `current_dir` are the folders of the two files (`Workflow::base_dir`): a
/// path the file gives relative to its folder (`cwd`, `expect.json_schema`) is the same path
/// in both when it is the same under each folder, so the same file at another place (another
/// node of a cluster, a moved project) has not changed.
pub fn definition_changes(
    stored: &JobDef,
    stored_dir: &Path,
    current: Option<&JobDef>,
    current_dir: &Path,
) -> Vec<String> {
    let Some(current) = current else { return vec![format!("job `{}` is no longer in the file", stored.name)] };
    let now = tasks_by_name(current);
    let mut changes = Vec::new();
    for task in &stored.tasks {
        match now.get(task.name.as_str()) {
            None => changes.push(format!("task `{}` removed", task.name)),
            Some(now) if moved(now, current_dir, stored_dir) != *task => {
                changes.push(format!("task `{}` changed", task.name))
            }
            Some(_) => {}
        }
    }
    let settings = [
        ("params", stored.params != current.params),
        ("budget_usd", stored.budget_usd_micros != current.budget_usd_micros),
        ("fail_fast", stored.fail_fast != current.fail_fast),
    ];
    changes.extend(settings.iter().filter(|(_, differs)| *differs).map(|(key, _)| format!("`{key}` changed")));
    changes
}

/// `task` of a file in folder `from` as if that file were in folder `to`: its paths under `from`
/// are under `to` (paths outside the folder stay as they are).
fn moved(task: &TaskDef, from: &Path, to: &Path) -> TaskDef {
    let rebase = |path: &Path| path.strip_prefix(from).map_or_else(|_| path.to_path_buf(), |rel| to.join(rel));
    let mut task = task.clone();
    task.cwd = rebase(&task.cwd);
    task.env_files = task.env_files.iter().map(|f| rebase(f)).collect();
    if let Some(schema) = task.expect.as_mut().and_then(|e| e.json_schema.as_mut()) {
        *schema = rebase(schema);
    }
    task
}

/// Whether a job run whose task runs are `run_tasks` can switch to `current`: each of its tasks
/// must still exist, and need only tasks of the run (a task added since stays outside the run).
pub fn can_switch(run_tasks: &[&str], current: &JobDef) -> Result<(), String> {
    let now = tasks_by_name(current);
    let missing: Vec<String> = run_tasks.iter().filter(|t| !now.contains_key(*t)).map(|t| t.to_string()).collect();
    if !missing.is_empty() {
        return Err(format!("{} no longer in job `{}`", quoted_list(&missing), current.name));
    }
    let in_run: HashSet<&str> = run_tasks.iter().copied().collect();
    for task in run_tasks.iter().filter_map(|t| now.get(t)) {
        if let Some(need) = task.needs.iter().find(|n| !in_run.contains(n.as_str())) {
            return Err(format!(
                "task `{}` now needs `{need}`, which is not part of this job run; start a new run for that",
                task.name
            ));
        }
    }
    Ok(())
}

/// A job of 100k tasks is looked up by name in O(1), not O(n) per task.
fn tasks_by_name(job: &JobDef) -> HashMap<&str, &TaskDef> {
    job.tasks.iter().map(|t| (t.name.as_str(), t)).collect()
}

fn quoted_list(names: &[String]) -> String {
    let verb = if names.len() == 1 { "is" } else { "are" };
    format!("{} {verb}", names.iter().map(|n| format!("task `{n}`")).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    /// fetch → analyze → deliver, and `other` alone.
    fn graph() -> JobGraph {
        let names = ["fetch", "analyze", "deliver", "other"].map(String::from).to_vec();
        JobGraph::from_needs(names, vec![vec![], vec![0], vec![1], vec![]])
    }

    fn past(task: &'static str, task_run: u64, state: TaskState) -> PastRun<'static> {
        PastRun { task, task_run, job_run: task_run * 10, state }
    }

    #[test]
    fn only_borrows_the_latest_success_of_every_need() {
        let history = [
            past("fetch", 1, Succeeded),
            past("analyze", 2, Succeeded),
            past("fetch", 5, Succeeded),
            past("fetch", 7, Dead),
            past("analyze", 6, Dead),
        ];
        let plan = only_plan(&graph(), "deliver", &history).expect("planned");
        assert_eq!(plan.task, 2);
        let sources: Vec<(usize, u64, u64)> = plan.borrowed.iter().map(|(i, r)| (*i, r.task_run, r.job_run)).collect();
        assert_eq!(sources, [(0, 5, 50), (1, 2, 20)], "latest succeeded, not the latest");
        assert_eq!(plan.tasks(), [0, 1, 2]);
    }

    #[test]
    fn only_table() {
        type Case<'a> = (&'a str, &'a [PastRun<'a>], Result<Vec<usize>, &'a str>);
        let cases: &[Case] = &[
            ("fetch", &[], Ok(vec![0])),
            ("other", &[], Ok(vec![3])),
            ("analyze", &[], Err("task `analyze` needs `fetch`, which has no succeeded run")),
            ("deliver", &[past("fetch", 1, Succeeded)], Err("needs `analyze`, which has no succeeded run")),
            ("deliver", &[], Err("needs `fetch`, `analyze`, which have no succeeded run")),
            ("deliver", &[past("analyze", 3, Succeeded), past("fetch", 1, Dead)], Err("needs `fetch`")),
            ("nope", &[], Err("no task `nope` (the tasks are: fetch, analyze, deliver, other)")),
        ];
        for (task, history, want) in cases {
            let got = only_plan(&graph(), task, history).map(|p| p.tasks()).map_err(|e| e.to_string());
            match (want, &got) {
                (Ok(tasks), Ok(got)) => assert_eq!(got, tasks, "--only {task}"),
                (Err(text), Err(message)) => assert!(message.contains(text), "--only {task}: {message}"),
                _ => panic!("--only {task}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn from_table() {
        let done = [Succeeded, Succeeded, Succeeded, Succeeded];
        type Case<'a> = (&'a str, [TaskState; 4], Result<Vec<usize>, &'a str>);
        let cases: &[Case] = &[
            ("fetch", done, Ok(vec![0, 1, 2])),
            ("analyze", done, Ok(vec![1, 2])),
            ("deliver", done, Ok(vec![2])),
            ("other", done, Ok(vec![3])),
            ("analyze", [Succeeded, Dead, Skipped, Succeeded], Ok(vec![1, 2])),
            ("analyze", [Succeeded, Cancelled, Skipped, Skipped], Ok(vec![1, 2])),
            ("deliver", [Succeeded, Dead, Skipped, Succeeded], Err("needs `analyze`, which is dead")),
            (
                "deliver",
                [Succeeded, Succeeded, Succeeded, Running],
                Err("task `other` is running: --from works on a finished"),
            ),
            (
                "fetch",
                [Succeeded, Succeeded, Succeeded, Dead],
                Err("task `other` is dead and is not downstream of `fetch`"),
            ),
            ("nope", done, Err("no task `nope`")),
        ];
        for (from, states, want) in cases {
            let got = plan_from(&graph(), states, from).map_err(|e| e.to_string());
            match (want, &got) {
                (Ok(tasks), Ok(got)) => assert_eq!(got, tasks, "--from {from} on {states:?}"),
                (Err(text), Err(message)) => assert!(message.contains(text), "--from {from}: {message}"),
                _ => panic!("--from {from} on {states:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    fn job(text: &str) -> JobDef {
        let wf = crate::config::parse(std::path::Path::new("/wf/gaffer.toml"), text).expect("valid");
        wf.jobs[0].clone()
    }

    const BASE: &str = "[jobs.j]\nbudget_usd = 1\n[jobs.j.tasks.a]\nrun = \"echo a\"\n[jobs.j.tasks.b]\nneeds = [\"a\"]\nrun = \"echo b\"\n";

    #[test]
    fn definition_changes_table() {
        let stored = job(BASE);
        let cases: &[(&str, &[&str])] = &[
            (BASE, &[]),
            (&BASE.replace("echo b", "echo B"), &["task `b` changed"]),
            (&format!("{BASE}[jobs.j.tasks.c]\nrun = \"true\"\n"), &[]),
            (&BASE.replace("budget_usd = 1", "budget_usd = 2"), &["`budget_usd` changed"]),
            (&BASE.replace("budget_usd = 1", "budget_usd = 1\non_failure = \"true\""), &[]),
            (
                "[jobs.j]\nbudget_usd = 1\n[jobs.j.tasks.a]\nrun = \"echo a\"\n[jobs.j.tasks.c]\nrun = \"true\"\n",
                &["task `b` removed"],
            ),
        ];
        let dir = Path::new("/wf");
        for (now, want) in cases {
            assert_eq!(definition_changes(&stored, dir, Some(&job(now)), dir), *want, "{now}");
        }
        assert_eq!(definition_changes(&stored, dir, None, dir), ["job `j` is no longer in the file"]);
    }

    #[test]
    fn the_same_file_in_another_folder_has_not_changed() {
        let text = format!(
            "{BASE}[jobs.j.tasks.c]\ncwd = \"sub\"\nrun = \"true\"\nexpect = {{ output = \"v\", json_schema = \"s.json\" }}\n\
             [jobs.j.tasks.d]\ncwd = \"/abs\"\nrun = \"true\"\n"
        );
        let at = |file: &str, text: &str| {
            let wf = crate::config::parse(Path::new(file), text).expect("valid");
            (wf.jobs[0].clone(), wf.base_dir)
        };
        let (stored, stored_dir) = at("/node-a/flow/gaffer.toml", &text);
        let (elsewhere, dir) = at("/node-b/x/gaffer.toml", &text);
        assert_ne!(stored.tasks[2].cwd, elsewhere.tasks[2].cwd, "cwd is absolute once read");
        assert!(definition_changes(&stored, &stored_dir, Some(&elsewhere), &dir).is_empty());
        let (edited, dir) = at("/node-b/x/gaffer.toml", &text.replace("cwd = \"sub\"", "cwd = \"other\""));
        assert_eq!(definition_changes(&stored, &stored_dir, Some(&edited), &dir), ["task `c` changed"]);
        let (edited, dir) = at("/node-b/x/gaffer.toml", &text.replace("/abs", "/elsewhere"));
        assert_eq!(definition_changes(&stored, &stored_dir, Some(&edited), &dir), ["task `d` changed"]);
    }

    #[test]
    fn switching_keeps_the_run_closed_under_needs() {
        let now = job(&format!("{BASE}[jobs.j.tasks.c]\nneeds = [\"b\"]\nrun = \"true\"\n"));
        assert_eq!(can_switch(&["a", "b"], &now), Ok(()), "an added task stays outside the run");
        assert_eq!(can_switch(&["b"], &job(BASE)).map_err(|e| e.contains("now needs `a`")), Err(true));
        let gone = can_switch(&["a", "b", "x"], &now).expect_err("x is gone");
        assert!(gone.contains("task `x` is no longer in job `j`"), "{gone}");
    }

    #[test]
    fn slicing_keeps_file_order() {
        let sliced = slice_job(&job(BASE), &["b", "a"]);
        let names: Vec<&str> = sliced.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(slice_job(&job(BASE), &["a"]).tasks.len(), 1);
    }
}
