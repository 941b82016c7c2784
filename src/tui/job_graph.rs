//! The task graph of a job run's detail (SPEC §2.2: everywhere a user looks). The workflow's one
//! graph laid out as a tree: `needs` and transitions (with their `on` and `when`), a transition
//! back to a task drawn above as a line of its own (`↺ review`) that is not followed, joins marked;
//! and each task's task runs in the job run as one node with counts (`review ×12  9✓ 2⟳ 1✗`) that
//! can be expanded into its instances. Pure: plain data in, rows out; `view::detail` draws the
//! rows and `update` moves the cursor over them, so both see the same rows.

use crate::config::{Join, TransitionOn};
use crate::model::TaskState;
use crate::model::workflow_graph::WorkflowGraph;

use super::model::{JobRow, Model, TaskRow};

/// Where a task run counts in a grouped node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Succeeded,
    /// Not ended yet: pending, queued, running, retrying, waiting.
    Active,
    /// Ended without succeeding: dead, failed (handled), cancelled.
    Failed,
    Skipped,
}

impl Bucket {
    pub const ALL: [Bucket; 4] = [Bucket::Succeeded, Bucket::Active, Bucket::Failed, Bucket::Skipped];

    /// The one rule for which runs count in which glyph.
    pub fn of(state: TaskState) -> Bucket {
        match state {
            TaskState::Succeeded => Bucket::Succeeded,
            TaskState::Pending | TaskState::Queued | TaskState::Running | TaskState::Retrying | TaskState::Waiting => {
                Bucket::Active
            }
            TaskState::Dead | TaskState::Failed | TaskState::Cancelled => Bucket::Failed,
            TaskState::Skipped => Bucket::Skipped,
        }
    }

    pub fn glyph(self) -> char {
        match self {
            Bucket::Succeeded => '✓',
            Bucket::Active => '⟳',
            Bucket::Failed => '✗',
            Bucket::Skipped => '⊘',
        }
    }

    /// What the glyph stands for, in the legend.
    pub fn meaning(self) -> &'static str {
        match self {
            Bucket::Succeeded => "succeeded",
            Bucket::Active => "in progress",
            Bucket::Failed => "dead/failed/cancelled",
            Bucket::Skipped => "skipped",
        }
    }
}

/// The legend under the graph's heading: `✓ succeeded  ⟳ queued/running/retrying …`.
pub fn legend() -> String {
    Bucket::ALL.iter().map(|b| format!("{} {}", b.glyph(), b.meaning())).collect::<Vec<_>>().join("  ")
}

/// How many runs are in each bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts([u32; 4]);

impl Counts {
    pub fn of(states: impl IntoIterator<Item = TaskState>) -> Counts {
        let mut counts = Counts::default();
        for state in states {
            counts.0[Bucket::of(state) as usize] += 1;
        }
        counts
    }

    pub fn get(self, bucket: Bucket) -> u32 {
        self.0[bucket as usize]
    }

    /// The buckets with runs, in [`Bucket::ALL`] order: what `9✓ 2⟳ 1✗` shows.
    pub fn parts(self) -> Vec<(Bucket, u32)> {
        Bucket::ALL.into_iter().map(|b| (b, self.get(b))).filter(|(_, n)| *n > 0).collect()
    }

    /// `9✓ 2⟳ 1✗`.
    pub fn text(self) -> String {
        self.parts().iter().map(|(b, n)| format!("{n}{}", b.glyph())).collect::<Vec<_>>().join(" ")
    }
}

/// How many characters of a `when` the graph shows.
pub const WHEN_CHARS: usize = 32;

/// One edge of the drawn graph: `from` must succeed (`needs`), or a transition of `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    /// `None` for a need.
    pub on: Option<TransitionOn>,
    pub when: Option<String>,
}

impl Edge {
    /// `on failure if outputs.verdict != "ok"` (the `when` shortened); empty for a need.
    pub fn condition(&self) -> String {
        let Some(on) = self.on else { return String::new() };
        match &self.when {
            Some(when) => format!("on {} if {}", on.as_str(), shorten(when, WHEN_CHARS)),
            None => format!("on {}", on.as_str()),
        }
    }

    /// `review on failure if …`; a need is just its task's name.
    pub fn describe(&self, graph: &WorkflowGraph) -> String {
        let from = graph.name(self.from);
        match self.on {
            None => from.to_string(),
            Some(_) => format!("{from} {}", self.condition()),
        }
    }
}

/// `text` on one line, at most `max` characters, `…` where it was cut.
pub fn shorten(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// One line of the laid-out graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// A task. `branch` is `│ ├●` (the connectors of its ancestors, then its own); `under` the
    /// connectors of the lines right under it, its runs when expanded (`│ │ │` when it has
    /// children below them); `incoming` its edges from tasks drawn above, the one it hangs under
    /// included.
    Task { task: usize, branch: String, under: String, incoming: Vec<Edge> },
    /// A transition to a task that is its own ancestor (a cycle): a line under its source, not
    /// followed, so a loop is drawn once.
    Back { edge: Edge, branch: String },
}

/// The graph as a tree in drawing order. A task hangs under the upstream task that sets its
/// depth (through `needs` or transitions, back edges left out); when several do, under the last
/// in file order, so a task joining siblings is drawn after all of them. Its other upstream
/// tasks are named on its line. Linear in tasks and edges; no recursion.
pub fn layout(graph: &WorkflowGraph) -> Vec<Placed> {
    let n = graph.len();
    let mut edges = Vec::new();
    for from in 0..n {
        for t in graph.transitions(from) {
            for &to in &t.targets {
                edges.push(Edge { from, to, on: Some(t.on), when: t.when.clone() });
            }
        }
        for &to in graph.dependents(from) {
            edges.push(Edge { from, to, on: None, when: None });
        }
    }
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in edges.iter().enumerate() {
        out[e.from].push(i);
    }
    for list in &mut out {
        list.sort_by_key(|&i| edges[i].to);
    }
    let back = back_edges(graph, &edges, &out);
    let depth = depths(n, &edges, &back);
    let mut parent: Vec<Option<usize>> = vec![None; n];
    let mut incoming: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in edges.iter().enumerate().filter(|(i, _)| !back[*i]) {
        incoming[e.to].push(i);
        if depth[e.from] + 1 == depth[e.to] && parent[e.to].is_none_or(|p| edges[p].from < e.from) {
            parent[e.to] = Some(i);
        }
    }
    let mut children: Vec<Vec<Child>> = vec![Vec::new(); n];
    for (task, p) in parent.iter().enumerate() {
        if let Some(p) = p {
            children[edges[*p].from].push(Child::Task(task));
        }
    }
    for (i, e) in edges.iter().enumerate().filter(|(i, _)| back[*i]) {
        children[e.from].push(Child::Back(i));
    }
    let mut rows = Vec::new();
    let mut seen = vec![false; n];
    let roots: Vec<usize> = (0..n).filter(|&t| parent[t].is_none()).collect();
    for root in roots.into_iter().chain(0..n) {
        let mut stack = vec![(Child::Task(root), None::<(String, bool)>)];
        while let Some((child, at)) = stack.pop() {
            let (own, below) = match &at {
                None => ("●".to_string(), String::new()),
                Some((prefix, last)) => {
                    let (own, down) = if *last { ('└', ' ') } else { ('├', '│') };
                    (format!("{prefix}{own}"), format!("{prefix}{down} "))
                }
            };
            let task = match child {
                Child::Back(i) => {
                    rows.push(Placed::Back { edge: edges[i].clone(), branch: format!("{own}↺") });
                    continue;
                }
                Child::Task(task) => task,
            };
            if std::mem::replace(&mut seen[task], true) {
                continue;
            }
            let branch = if at.is_none() { own } else { format!("{own}●") };
            let incoming = incoming[task].iter().map(|&i| edges[i].clone()).collect();
            let mine = &children[task];
            let under = format!("{below}{}", if mine.is_empty() { ' ' } else { '│' });
            rows.push(Placed::Task { task, branch, under, incoming });
            for (k, c) in mine.iter().enumerate().rev() {
                stack.push((*c, Some((below.clone(), k + 1 == mine.len()))));
            }
        }
    }
    rows
}

#[derive(Debug, Clone, Copy)]
enum Child {
    Task(usize),
    /// An edge index.
    Back(usize),
}

/// The edges that close a cycle: found by one depth-first walk from the entry tasks (then from
/// any task not reached), an edge to a task still on the walk's path.
fn back_edges(graph: &WorkflowGraph, edges: &[Edge], out: &[Vec<usize>]) -> Vec<bool> {
    let mut back = vec![false; edges.len()];
    // 0: not seen, 1: on the path, 2: done.
    let mut mark = vec![0u8; graph.len()];
    for start in graph.entry_tasks().into_iter().chain(0..graph.len()) {
        if mark[start] != 0 {
            continue;
        }
        mark[start] = 1;
        let mut path = vec![(start, 0usize)];
        while let Some((task, next)) = path.last_mut() {
            let Some(&edge) = out[*task].get(*next) else {
                mark[*task] = 2;
                path.pop();
                continue;
            };
            *next += 1;
            let to = edges[edge].to;
            match mark[to] {
                0 => {
                    mark[to] = 1;
                    path.push((to, 0));
                }
                1 => back[edge] = true,
                _ => {}
            }
        }
    }
    back
}

/// Each task's depth over the edges that are not back edges (a DAG): 0 with no edge in, else one
/// more than its deepest upstream task's.
fn depths(n: usize, edges: &[Edge], back: &[bool]) -> Vec<usize> {
    let mut into = vec![0usize; n];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (e, _) in edges.iter().zip(back).filter(|(_, b)| !**b) {
        into[e.to] += 1;
        out[e.from].push(e.to);
    }
    let mut depth = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&t| into[t] == 0).collect();
    while let Some(task) = ready.pop() {
        for &to in &out[task] {
            depth[to] = depth[to].max(depth[task] + 1);
            into[to] -= 1;
            if into[to] == 0 {
                ready.push(to);
            }
        }
    }
    depth
}

/// One task run as the graph shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef {
    pub id: u64,
    /// `review#2`, `fetch[3]`, `deploy (undo)`.
    pub label: String,
    pub state: TaskState,
    pub compensation: bool,
}

/// One line of the graph as drawn, and what the cursor can stand on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A task with its runs in this job run (creation order); none: not reached. `grouped` when
    /// it is drawn as one node with counts, `expanded` when its instances follow.
    Task {
        task: usize,
        branch: String,
        incoming: Vec<Edge>,
        runs: Vec<RunRef>,
        grouped: bool,
        expanded: bool,
    },
    /// One run of an expanded task.
    Instance {
        task: usize,
        branch: String,
        run: RunRef,
    },
    Back {
        edge: Edge,
        branch: String,
    },
}

impl Row {
    /// The task the row belongs to (for a back edge, its source).
    pub fn task(&self) -> usize {
        match self {
            Row::Task { task, .. } | Row::Instance { task, .. } => *task,
            Row::Back { edge, .. } => edge.from,
        }
    }
}

/// The rows of the graph: `runs[t]` are task `t`'s runs, `expanded(t)` whether its instances are
/// shown. A task is one node with counts when it has several runs or fans out.
pub fn rows(graph: &WorkflowGraph, mut runs: Vec<Vec<RunRef>>, expanded: impl Fn(usize) -> bool) -> Vec<Row> {
    let mut out = Vec::new();
    for placed in layout(graph) {
        match placed {
            Placed::Back { edge, branch } => out.push(Row::Back { edge, branch }),
            Placed::Task { task, branch, under, incoming } => {
                let mine = std::mem::take(&mut runs[task]);
                let grouped = mine.len() > 1 || (graph.is_fanned_out(task) && !mine.is_empty());
                let expanded = grouped && expanded(task);
                let instances = if expanded { mine.clone() } else { Vec::new() };
                out.push(Row::Task { task, branch, incoming, runs: mine, grouped, expanded });
                out.extend(instances.into_iter().map(|run| Row::Instance { task, branch: under.clone(), run }));
            }
        }
    }
    out
}

/// The rows of job run `j`'s graph, with its graph; `None` when its job's shape is unknown here
/// (a workflow other than the one loaded).
pub fn of_job(model: &Model, j: &JobRow) -> Option<(WorkflowGraph, Vec<Row>)> {
    let graph = model.shapes.get(&j.rec.job)?.graph();
    let mut runs: Vec<Vec<RunRef>> = vec![Vec::new(); graph.len()];
    for t in j.tasks.iter().filter_map(|id| model.tasks.get(id)) {
        if let Some(task) = graph.index(&t.rec.task) {
            runs[task].push(run_ref(t));
        }
    }
    let id = j.rec.id;
    let rows = rows(&graph, runs, |task| model.expanded.contains(&(id, graph.name(task).to_string())));
    Some((graph, rows))
}

/// A task run as the graph names it (`model::fanout::label`; a compensation says `(undo)`).
pub fn run_ref(t: &TaskRow) -> RunRef {
    let r = &t.rec;
    RunRef { id: r.id, label: r.label(), state: r.state, compensation: r.compensation }
}

/// Joins as the graph marks them: `⋈ all of 3`, `⋈ 2 of 3`.
pub fn join_mark(graph: &WorkflowGraph, task: usize) -> Option<String> {
    let of = graph.sources(task).len();
    match graph.join(task)? {
        Join::All => Some(format!("⋈ all of {of}")),
        Join::Count(n) => Some(format!("⋈ {n} of {of}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transition;
    use crate::model::workflow_graph::TaskNode;

    #[test]
    fn each_state_counts_in_one_bucket() {
        use TaskState::*;
        let table = [
            (Pending, Bucket::Active),
            (Queued, Bucket::Active),
            (Running, Bucket::Active),
            (Retrying, Bucket::Active),
            (Waiting, Bucket::Active),
            (Succeeded, Bucket::Succeeded),
            (Dead, Bucket::Failed),
            (Failed, Bucket::Failed),
            (Cancelled, Bucket::Failed),
            (Skipped, Bucket::Skipped),
        ];
        assert_eq!(table.len(), TaskState::ALL.len(), "every state is in the table");
        for (state, bucket) in table {
            assert_eq!(Bucket::of(state), bucket, "{state:?}");
        }
        let counts = Counts::of([Succeeded, Succeeded, Running, Retrying, Dead, Succeeded]);
        assert_eq!(counts.text(), "3✓ 2⟳ 1✗");
        assert_eq!(Counts::of([Skipped]).text(), "1⊘");
        assert_eq!(Counts::default().text(), "");
    }

    #[test]
    fn a_long_when_is_shortened_on_one_line() {
        assert_eq!(shorten("a == 1", 10), "a == 1");
        assert_eq!(shorten("outputs.verdict\n  != 'approved'", 20), "outputs.verdict != …");
        let e = Edge { from: 0, to: 1, on: Some(TransitionOn::Failure), when: Some("x".into()) };
        assert_eq!(e.condition(), "on failure if x");
    }

    fn node(name: &str, needs: &[&str], next: &[(TransitionOn, Option<&str>, &[&str])]) -> TaskNode {
        TaskNode {
            name: name.into(),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            next: next
                .iter()
                .map(|(on, when, to)| Transition {
                    on: *on,
                    when: when.map(str::to_string),
                    targets: to.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            max_iterations: 10,
            ..TaskNode::default()
        }
    }

    /// `branch name [incoming]` per line, `branch ↺ target (condition)` for back edges.
    fn drawn(graph: &WorkflowGraph) -> Vec<String> {
        layout(graph)
            .into_iter()
            .map(|p| match p {
                Placed::Task { task, branch, incoming, .. } => {
                    let from: Vec<String> = incoming.iter().map(|e| e.describe(graph)).collect();
                    format!("{branch} {} [{}]", graph.name(task), from.join(", "))
                }
                Placed::Back { edge, branch } => format!("{branch} {} ({})", graph.name(edge.to), edge.condition()),
            })
            .collect()
    }

    #[test]
    fn a_review_loop_is_drawn_once_with_its_back_edge() {
        use TransitionOn::*;
        let g = WorkflowGraph::new(vec![
            node("write", &[], &[(Success, None, &["review"])]),
            node(
                "review",
                &[],
                &[(Failure, Some("outputs.verdict != 'approved'"), &["revise"]), (Success, None, &["ship"])],
            ),
            node("revise", &[], &[(Always, None, &["review"])]),
            node("ship", &[], &[]),
        ]);
        assert_eq!(
            drawn(&g),
            [
                "● write []",
                "└● review [write on success]",
                "  ├● revise [review on failure if outputs.verdict != 'approved']",
                "  │ └↺ review (on always)",
                "  └● ship [review on success]",
            ]
        );
    }

    #[test]
    fn a_self_loop_and_a_join_are_drawn_without_repeating() {
        use TransitionOn::*;
        let mut join = node("merge", &[], &[]);
        join.join = Some(Join::Count(1));
        let g = WorkflowGraph::new(vec![
            node("poll", &[], &[(Failure, None, &["poll"]), (Success, None, &["merge"])]),
            node("other", &[], &[(Success, None, &["merge"])]),
            join,
        ]);
        assert_eq!(
            drawn(&g),
            ["● poll []", "└↺ poll (on failure)", "● other []", "└● merge [poll on success, other on success]"],
            "the join hangs under its last source"
        );
        assert_eq!(join_mark(&g, 2).as_deref(), Some("⋈ 1 of 2"));
        assert_eq!(join_mark(&g, 0), None);
    }

    #[test]
    fn a_needs_tree_hangs_each_task_under_its_deepest_need() {
        let g = WorkflowGraph::new(vec![
            node("plan", &[], &[]),
            node("security", &["plan"], &[]),
            node("style", &["plan"], &[]),
            node("summary", &["security", "style"], &[]),
        ]);
        assert_eq!(drawn(&g), ["● plan []", "├● security [plan]", "└● style [plan]", "  └● summary [security, style]"]);
    }

    #[test]
    fn a_long_cycle_is_laid_out_without_deep_recursion() {
        // Indents grow with depth (two characters a level), so keep the chain moderate.
        let n = 5_000;
        let tasks: Vec<TaskNode> = (0..n)
            .map(|i| {
                let next = format!("t{}", (i + 1) % n);
                let mut t = node(&format!("t{i}"), &[], &[]);
                t.next = vec![Transition { on: TransitionOn::Success, when: None, targets: vec![next] }];
                t
            })
            .collect();
        let g = WorkflowGraph::new(tasks);
        let placed = layout(&g);
        assert_eq!(placed.iter().filter(|p| matches!(p, Placed::Task { .. })).count(), n);
        assert_eq!(placed.iter().filter(|p| matches!(p, Placed::Back { .. })).count(), 1);
    }

    #[test]
    fn several_runs_are_one_node_until_expanded() {
        use TaskState::*;
        let g = WorkflowGraph::new(vec![
            node("a", &[], &[(TransitionOn::Success, None, &["b", "c"])]),
            node("b", &[], &[]),
            node("c", &[], &[]),
        ]);
        let run = |id, label: &str, state| RunRef { id, label: label.into(), state, compensation: false };
        let runs = || vec![vec![run(1, "a", Succeeded)], vec![run(2, "b", Succeeded), run(3, "b#2", Dead)], Vec::new()];
        let kinds = |rows: &[Row]| -> Vec<String> {
            rows.iter()
                .map(|r| match r {
                    Row::Task { runs, grouped, expanded, .. } => format!("task {} {grouped} {expanded}", runs.len()),
                    Row::Instance { run, .. } => format!("instance {}", run.label),
                    Row::Back { .. } => "back".into(),
                })
                .collect()
        };
        assert_eq!(
            kinds(&rows(&g, runs(), |_| false)),
            ["task 1 false false", "task 2 true false", "task 0 false false"]
        );
        assert_eq!(
            kinds(&rows(&g, runs(), |_| true)),
            ["task 1 false false", "task 2 true true", "instance b", "instance b#2", "task 0 false false"],
            "a single run and a task not reached have nothing to expand"
        );
    }
}
