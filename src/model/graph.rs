//! The job-run transition engine, as pure functions.
//!
//! Event-driven, not a topological sort: when a task run ends, only *its* outgoing edges are
//! looked at. `needs = [a, b]` on `x` is sugar for the transitions `a → x` and `b → x` with a
//! join over all of them. Workflow control of SPEC §2.2 (`next`, `join = N`, cycles) extends the
//! edges here without changing the actor that applies the steps.
//!
//! Every function takes the current states, changes them in place and returns the changes it
//! made, so the caller can persist exactly those and report them.

use crate::config::JobDef;
use crate::model::workflow_graph::WorkflowGraph;
use crate::model::{JobState, TaskState};

/// The edges of one job, by task index (file order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobGraph {
    pub names: Vec<String>,
    needs: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    /// Tasks with `wait_for`: when ready they wait for a signal instead of entering a queue.
    gated: Vec<bool>,
    /// `fail_fast = true` on the job: the first unhandled failure stops all new work. Without
    /// it only what depends on the failure is skipped (SPEC §2.2 "Outcome").
    pub fail_fast: bool,
    /// Targets of transitions (`next`): started by an arriving transition, never by `needs`.
    targets: Vec<bool>,
    /// Tasks that need a transition target: that need may run several times, so the job-run
    /// core (`model::run`) decides them from its latest task run, not this engine.
    held: Vec<bool>,
}

/// The states of one job run's task runs, with a count per state so the questions asked on
/// every event (is anything still open? is the run failing? is anything queued?) cost O(1)
/// however many tasks the job has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStates {
    states: Vec<TaskState>,
    counts: [usize; TaskState::ALL.len()],
}

impl TaskStates {
    pub fn new(states: Vec<TaskState>) -> TaskStates {
        let mut counts = [0; TaskState::ALL.len()];
        for s in &states {
            counts[*s as usize] += 1;
        }
        TaskStates { states, counts }
    }

    pub fn get(&self, task: usize) -> TaskState {
        self.states[task]
    }

    pub fn set(&mut self, task: usize, to: TaskState) {
        self.counts[self.states[task] as usize] -= 1;
        self.counts[to as usize] += 1;
        self.states[task] = to;
    }

    /// A new task run (another instance of a task, SPEC §2.2), after the first one of each task.
    pub fn push(&mut self, state: TaskState) {
        self.counts[state as usize] += 1;
        self.states.push(state);
    }

    pub fn count(&self, state: TaskState) -> usize {
        self.counts[state as usize]
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn as_slice(&self) -> &[TaskState] {
        &self.states
    }

    /// How many states are not terminal.
    pub fn open(&self) -> usize {
        TaskState::ALL.iter().filter(|s| !s.is_terminal()).map(|s| self.count(*s)).sum()
    }
}

impl std::ops::Index<usize> for TaskStates {
    type Output = TaskState;

    fn index(&self, task: usize) -> &TaskState {
        &self.states[task]
    }
}

/// One state change decided by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub task: usize,
    pub to: TaskState,
}

impl JobGraph {
    /// Builds the graph of a validated job (every `needs` entry names a task of the job).
    pub fn new(job: &JobDef) -> JobGraph {
        JobGraph { fail_fast: job.fail_fast, ..JobGraph::from_workflow(&WorkflowGraph::of(job)) }
    }

    /// The `needs` part of the workflow graph, which is what this engine runs today.
    pub fn from_workflow(graph: &WorkflowGraph) -> JobGraph {
        let needs = (0..graph.len()).map(|t| graph.needs(t).to_vec()).collect();
        let targets = (0..graph.len()).map(|t| graph.is_transition_target(t)).collect();
        let held = (0..graph.len()).map(|t| graph.needs_a_target(t)).collect();
        JobGraph {
            targets,
            held,
            ..JobGraph::from_needs(graph.names().to_vec(), needs)
                .with_gates((0..graph.len()).map(|t| graph.is_gated(t)).collect())
        }
    }

    pub fn from_needs(names: Vec<String>, needs: Vec<Vec<usize>>) -> JobGraph {
        let mut dependents = vec![Vec::new(); needs.len()];
        for (task, ns) in needs.iter().enumerate() {
            for &n in ns {
                dependents[n].push(task);
            }
        }
        let gated = vec![false; needs.len()];
        let targets = vec![false; needs.len()];
        let held = vec![false; needs.len()];
        JobGraph { names, needs, dependents, gated, fail_fast: false, targets, held }
    }

    /// Marks the tasks that wait for a signal once ready (`wait_for`), by index.
    pub fn with_gates(mut self, gated: Vec<bool>) -> JobGraph {
        debug_assert_eq!(gated.len(), self.needs.len());
        self.gated = gated;
        self
    }

    /// Where `task` goes once its needs succeeded: its queue, or `waiting` for its signal.
    /// True when `task` is started by transitions, or decided by the job-run core (it needs a
    /// transition target): this engine leaves it alone.
    pub fn is_left_to_core(&self, task: usize) -> bool {
        self.targets[task] || self.held[task]
    }

    pub fn ready_state(&self, task: usize) -> TaskState {
        if self.gated[task] { TaskState::Waiting } else { TaskState::Queued }
    }

    pub fn len(&self) -> usize {
        self.needs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.needs.is_empty()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn needs(&self, task: usize) -> &[usize] {
        &self.needs[task]
    }

    /// Every task `task` needs, directly or through others.
    /// Costs the size of the ancestry, not of the job (a job may have 100k independent tasks).
    pub fn ancestors(&self, task: usize) -> Vec<usize> {
        reachable(&self.needs, task)
    }

    /// Every task that needs `task`, directly or through others (what `retry --from` re-runs).
    pub fn descendants(&self, task: usize) -> Vec<usize> {
        reachable(&self.dependents, task)
    }
}

/// The tasks reached from `task` along `edges` (not `task` itself, in no particular order).
fn reachable(edges: &[Vec<usize>], task: usize) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<usize> = edges[task].clone();
    while let Some(t) = stack.pop() {
        if seen.insert(t) {
            stack.extend(&edges[t]);
        }
    }
    seen.into_iter().collect()
}

/// One of the job run's tasks is dead or cancelled: an unhandled failure dooms the run.
pub fn is_failing(states: &TaskStates) -> bool {
    states.count(TaskState::Dead) + states.count(TaskState::Cancelled) > 0
}

/// With `fail_fast`, a failing job run takes no new work: what would start next is skipped.
/// Without it only what depends on the failure is (SPEC §2.2 "Outcome").
fn stops_new_work(graph: &JobGraph, states: &TaskStates) -> bool {
    graph.fail_fast && is_failing(states)
}

/// A new job run: the tasks whose `needs` all succeeded are ready (queued, or waiting for their
/// signal), the rest are pending. In a plain run that is the tasks with no `needs`; an `--only`
/// run starts with its needs succeeded (their outputs borrowed from earlier runs).
pub fn start(graph: &JobGraph, states: &mut TaskStates) -> Vec<Change> {
    let mut changes = Vec::new();
    for task in 0..graph.len() {
        if states[task] == TaskState::Pending
            && !graph.is_left_to_core(task)
            && all_succeeded(&graph.needs[task], states)
        {
            set(states, &mut changes, task, graph.ready_state(task));
        }
    }
    changes
}

/// `task` has just reached a terminal state (already set in `states`): follow its edges.
pub fn after_end(graph: &JobGraph, states: &mut TaskStates, task: usize) -> Vec<Change> {
    let mut changes = Vec::new();
    follow_edges(graph, states, task, &mut changes);
    if stops_new_work(graph, states) {
        stop_new_work(graph, states, &mut changes);
    }
    changes
}

/// After a dead-letter retry put `task` back in its queue: the job run may take new work again,
/// so everything that was skipped is looked at afresh.
pub fn reopen(graph: &JobGraph, states: &mut TaskStates) -> Vec<Change> {
    let mut changes = Vec::new();
    for task in 0..graph.len() {
        if states[task] == TaskState::Skipped {
            set(states, &mut changes, task, TaskState::Pending);
        }
    }
    changes.extend(reopen_pending(graph, states));
    changes
}

/// Settles every pending task whose needs have already ended (after a restart, a crash may
/// have come between a task's end and the commit of what follows it).
pub fn reopen_pending(graph: &JobGraph, states: &mut TaskStates) -> Vec<Change> {
    let mut changes = Vec::new();
    let failing = stops_new_work(graph, states);
    for task in topological_order(graph) {
        if states[task] != TaskState::Pending || graph.is_left_to_core(task) {
            continue;
        }
        let needs = &graph.needs[task];
        if needs.iter().any(|&n| states[n].is_unsuccessful_end()) || (failing && all_succeeded(needs, states)) {
            set(states, &mut changes, task, TaskState::Skipped);
        } else if all_succeeded(needs, states) {
            set(states, &mut changes, task, graph.ready_state(task));
        }
    }
    changes
}

/// `None` while anything can still happen; otherwise how the job run ended. `unreached` of the
/// pending states are tasks nothing reached, which have no task run (SPEC §2.2): they do not
/// keep the run open.
pub fn outcome(states: &TaskStates, unreached: usize, cancel_requested: bool) -> Option<JobState> {
    if states.open() > unreached {
        return None;
    }
    // A handled failure (`failed`) and what was skipped only because it was not reached do not
    // fail the run; a dead or cancelled task run does (SPEC §2.2 "Outcome").
    Some(if cancel_requested {
        JobState::Cancelled
    } else if is_failing(states) {
        JobState::Failed
    } else {
        JobState::Succeeded
    })
}

fn follow_edges(graph: &JobGraph, states: &mut TaskStates, task: usize, changes: &mut Vec<Change>) {
    let failing = stops_new_work(graph, states);
    for &next in &graph.dependents[task] {
        if states[next] != TaskState::Pending || graph.held[next] {
            continue;
        }
        if states[task].is_unsuccessful_end() {
            set(states, changes, next, TaskState::Skipped);
            follow_edges(graph, states, next, changes);
        } else if all_succeeded(&graph.needs[next], states) {
            let to = if failing { TaskState::Skipped } else { graph.ready_state(next) };
            set(states, changes, next, to);
            if to == TaskState::Skipped {
                follow_edges(graph, states, next, changes);
            }
        }
    }
}

/// Queued and waiting task runs have not started: they are skipped, and so is what depends on
/// them. Pending ones follow when their needs end.
fn stop_new_work(graph: &JobGraph, states: &mut TaskStates, changes: &mut Vec<Change>) {
    if states.count(TaskState::Queued) + states.count(TaskState::Waiting) == 0 {
        return;
    }
    for task in 0..states.len() {
        if matches!(states[task], TaskState::Queued | TaskState::Waiting) {
            set(states, changes, task, TaskState::Skipped);
            // Later task runs of a task (index past the graph's) have no `needs` edges of their own.
            if task < graph.len() {
                follow_edges(graph, states, task, changes);
            }
        }
    }
}

fn all_succeeded(needs: &[usize], states: &TaskStates) -> bool {
    needs.iter().all(|&n| states[n] == TaskState::Succeeded)
}

fn set(states: &mut TaskStates, changes: &mut Vec<Change>, task: usize, to: TaskState) {
    states.set(task, to);
    changes.push(Change { task, to });
}

/// Kahn's order; the validator rejects `needs` cycles, so every task appears once.
fn topological_order(graph: &JobGraph) -> Vec<usize> {
    let mut missing: Vec<usize> = graph.needs.iter().map(Vec::len).collect();
    let mut order: Vec<usize> = (0..graph.len()).filter(|&t| missing[t] == 0).collect();
    let mut i = 0;
    while i < order.len() {
        for &d in &graph.dependents[order[i]] {
            missing[d] -= 1;
            if missing[d] == 0 {
                order.push(d);
            }
        }
        i += 1;
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;
    use proptest::prelude::*;

    /// a → b → d, a → c → d, e alone.
    fn diamond() -> JobGraph {
        let names = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        JobGraph::from_needs(names, vec![vec![], vec![0], vec![0], vec![1, 2], vec![]])
    }

    fn end(graph: &JobGraph, states: &mut TaskStates, task: usize, to: TaskState) -> Vec<Change> {
        states.set(task, to);
        after_end(graph, states, task)
    }

    #[test]
    fn diamond_joins_over_all_needs() {
        let g = diamond();
        let mut s = TaskStates::new(vec![Pending; 5]);
        assert_eq!(start(&g, &mut s).len(), 2);
        assert_eq!(s.as_slice(), [Queued, Pending, Pending, Pending, Queued]);
        end(&g, &mut s, 0, Succeeded);
        assert_eq!(&s.as_slice()[1..3], [Queued, Queued]);
        end(&g, &mut s, 1, Succeeded);
        assert_eq!(s[3], Pending, "d waits for c too");
        end(&g, &mut s, 2, Succeeded);
        assert_eq!(s[3], Queued);
    }

    #[test]
    fn a_dead_task_skips_what_depends_on_it_and_independent_work_goes_on() {
        let g = diamond();
        let mut s = TaskStates::new(vec![Pending; 5]);
        start(&g, &mut s);
        end(&g, &mut s, 0, Dead);
        assert_eq!(s.as_slice(), [Dead, Skipped, Skipped, Skipped, Queued]);
        assert_eq!(outcome(&s, 0, false), None, "e is still to run");
        end(&g, &mut s, 4, Succeeded);
        assert_eq!(outcome(&s, 0, false), Some(JobState::Failed));
    }

    #[test]
    fn with_fail_fast_a_dead_task_stops_all_new_work() {
        let g = JobGraph { fail_fast: true, ..diamond() };
        let mut s = TaskStates::new(vec![Pending; 5]);
        start(&g, &mut s);
        end(&g, &mut s, 0, Dead);
        assert_eq!(s.as_slice(), [Dead, Skipped, Skipped, Skipped, Skipped]);
        assert_eq!(outcome(&s, 0, false), Some(JobState::Failed));
    }

    #[test]
    fn a_branch_that_failed_leaves_its_siblings_join_skipped_once_they_end() {
        let g = diamond();
        let mut s = TaskStates::new(vec![Pending; 5]);
        start(&g, &mut s);
        end(&g, &mut s, 0, Succeeded);
        end(&g, &mut s, 1, Dead);
        assert_eq!(s.as_slice(), [Succeeded, Dead, Queued, Skipped, Queued], "c still runs, d needs b");
    }

    #[test]
    fn running_work_finishes_when_failing() {
        let g = diamond();
        let mut s = TaskStates::new(vec![Pending; 5]);
        start(&g, &mut s);
        s.set(4, Running);
        end(&g, &mut s, 0, Dead);
        assert_eq!(s[4], Running);
        assert_eq!(outcome(&s, 0, false), None);
    }

    #[test]
    fn reopen_after_dead_letter_retry() {
        let g = diamond();
        let mut s = TaskStates::new(vec![Dead, Skipped, Skipped, Skipped, Succeeded]);
        s.set(0, Queued);
        reopen(&g, &mut s);
        assert_eq!(s.as_slice(), [Queued, Pending, Pending, Pending, Succeeded]);
        let mut s = TaskStates::new(vec![Succeeded, Dead, Skipped, Skipped, Succeeded]);
        s.set(1, Queued);
        reopen(&g, &mut s);
        assert_eq!(s.as_slice(), [Succeeded, Queued, Queued, Pending, Succeeded]);
    }

    #[test]
    fn gated_tasks_wait_when_ready_and_are_skipped_when_failing() {
        let g = diamond().with_gates(vec![true, false, true, false, false]);
        let mut s = TaskStates::new(vec![Pending; 5]);
        start(&g, &mut s);
        assert_eq!(s.as_slice(), [Waiting, Pending, Pending, Pending, Queued]);
        assert_eq!(outcome(&s, 0, false), None, "a waiting task keeps the run open");
        s.set(0, Queued);
        end(&g, &mut s, 0, Succeeded);
        assert_eq!(&s.as_slice()[1..3], [Queued, Waiting]);
        end(&g, &mut s, 1, Dead);
        assert_eq!(s.as_slice(), [Succeeded, Dead, Waiting, Skipped, Queued], "c and e are independent of b");
        let g = JobGraph { fail_fast: true, ..g };
        let mut s = TaskStates::new(vec![Succeeded, Queued, Waiting, Pending, Queued]);
        end(&g, &mut s, 1, Dead);
        assert_eq!(s.as_slice(), [Succeeded, Dead, Skipped, Skipped, Skipped], "fail_fast: no new work once failing");
    }

    #[test]
    fn ancestors_and_descendants_are_transitive() {
        let mut a = diamond().ancestors(3);
        a.sort();
        assert_eq!(a, [0, 1, 2]);
        assert!(diamond().ancestors(4).is_empty());
        let mut d = diamond().descendants(0);
        d.sort();
        assert_eq!(d, [1, 2, 3]);
        assert!(diamond().descendants(3).is_empty());
    }

    #[test]
    fn a_run_that_starts_with_its_needs_succeeded_queues_what_follows_them() {
        let g = diamond();
        let mut s = TaskStates::new(vec![Succeeded, Succeeded, Succeeded, Pending, Pending]);
        start(&g, &mut s);
        assert_eq!(s.as_slice(), [Succeeded, Succeeded, Succeeded, Queued, Queued]);
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome(&TaskStates::new(vec![Succeeded, Succeeded]), 0, false), Some(JobState::Succeeded));
        assert_eq!(outcome(&TaskStates::new(vec![Succeeded, Cancelled]), 0, true), Some(JobState::Cancelled));
        assert_eq!(outcome(&TaskStates::new(vec![Succeeded, Retrying]), 0, false), None);
    }

    /// A random DAG: each task needs some of the tasks before it.
    fn dag() -> impl Strategy<Value = JobGraph> {
        (1usize..9).prop_flat_map(|n| {
            proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n).prop_map(move |m| {
                let needs = (0..n).map(|t| (0..t).filter(|&u| m[t][u]).collect()).collect();
                JobGraph::from_needs((0..n).map(|i| format!("t{i}")).collect(), needs)
            })
        })
    }

    proptest! {
        /// Against the reference model of SPEC §7: whatever the outcomes and their order, a task
        /// only ever starts once all its needs succeeded, the run always ends, and it succeeds
        /// exactly when every task did.
        #[test]
        fn engine_matches_reference(g in dag(), fates in proptest::collection::vec(any::<bool>(), 9), picks in proptest::collection::vec(any::<usize>(), 64)) {
            let mut s = TaskStates::new(vec![Pending; g.len()]);
            start(&g, &mut s);
            let mut steps = 0;
            while outcome(&s, 0, false).is_none() {
                let queued: Vec<usize> = (0..g.len()).filter(|&t| s[t] == Queued).collect();
                prop_assert!(!queued.is_empty(), "stuck: {:?}", s.as_slice());
                let t = queued[picks[steps % picks.len()] % queued.len()];
                prop_assert!(g.needs(t).iter().all(|&n| s[n] == Succeeded));
                let to = if fates[t] { Succeeded } else { Dead };
                end(&g, &mut s, t, to);
                steps += 1;
                prop_assert!(steps <= g.len());
            }
            let all_ok = (0..g.len()).all(|t| fates[t]);
            prop_assert_eq!(outcome(&s, 0, false), Some(if all_ok { JobState::Succeeded } else { JobState::Failed }));
            if s.count(Skipped) > 0 {
                prop_assert!(!fates.iter().take(g.len()).all(|f| *f), "a task was skipped though every task succeeded");
            }
        }
    }
}
