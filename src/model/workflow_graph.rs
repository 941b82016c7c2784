//! The one graph of a job's workflow (SPEC §2.2): tasks by index in file order, their `needs`
//! and dependents, transition edges (`next`) with their `on`/`when`, the distinct sources of
//! every transition target (for `join`), and the per-task facts the engine and the views ask
//! about (gated, fanned out, compensated, iteration cap).
//!
//! Built once from a validated job ([`WorkflowGraph::of`]) or, by validation, from the drafts
//! of a file being checked ([`WorkflowGraph::new`], unknown names left out). `needs` has no
//! cycles in a valid job; transitions may form cycles, so every walk here is cycle-safe.

use std::collections::HashMap;

use crate::config::{JobDef, Join, Transition, TransitionOn};

/// One task as the graph sees it: names, not indices, so validation can build it from a file
/// with mistakes in it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskNode {
    pub name: String,
    pub needs: Vec<String>,
    pub next: Vec<Transition>,
    pub join: Option<Join>,
    /// `wait_for`: once ready it waits for a signal.
    pub gated: bool,
    pub max_iterations: u32,
    /// `for_each`.
    pub fanned_out: bool,
    /// `compensate`.
    pub has_compensation: bool,
}

/// One `next` entry with its targets as task indices (unknown names left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionEdge {
    pub on: TransitionOn,
    pub when: Option<String>,
    pub targets: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowGraph {
    names: Vec<String>,
    by_name: HashMap<String, usize>,
    /// Each task's needs, deduplicated, in file order.
    needs: Vec<Vec<usize>>,
    /// The tasks that need each task, in file order.
    dependents: Vec<Vec<usize>>,
    /// Each task's transitions, in file order.
    next: Vec<Vec<TransitionEdge>>,
    /// The distinct tasks with a transition to each task, in file order.
    sources: Vec<Vec<usize>>,
    join: Vec<Option<Join>>,
    gated: Vec<bool>,
    max_iterations: Vec<u32>,
    fanned_out: Vec<bool>,
    has_compensation: Vec<bool>,
}

impl WorkflowGraph {
    /// The graph of a validated job.
    pub fn of(job: &JobDef) -> WorkflowGraph {
        let nodes = job.tasks.iter().map(|t| TaskNode {
            name: t.name.clone(),
            needs: t.needs.clone(),
            next: t.next.clone(),
            join: t.join,
            gated: t.wait_for.is_some(),
            max_iterations: t.max_iterations,
            fanned_out: t.for_each.is_some(),
            has_compensation: t.compensate.is_some(),
        });
        WorkflowGraph::new(nodes.collect())
    }

    /// Builds the graph; names that are no task of the job are left out (validation reports them).
    /// Linear in tasks plus edges.
    pub fn new(nodes: Vec<TaskNode>) -> WorkflowGraph {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let by_name: HashMap<String, usize> = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let indices = |list: &[String]| -> Vec<usize> {
            let mut seen = std::collections::HashSet::new();
            list.iter().filter_map(|n| by_name.get(n).copied()).filter(|i| seen.insert(*i)).collect()
        };
        let needs: Vec<Vec<usize>> = nodes.iter().map(|n| indices(&n.needs)).collect();
        let next: Vec<Vec<TransitionEdge>> = nodes
            .iter()
            .map(|n| {
                n.next
                    .iter()
                    .map(|t| TransitionEdge { on: t.on, when: t.when.clone(), targets: indices(&t.targets) })
                    .collect()
            })
            .collect();
        let mut dependents = vec![Vec::new(); nodes.len()];
        for (task, ns) in needs.iter().enumerate() {
            for &n in ns {
                dependents[n].push(task);
            }
        }
        let mut sources: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (source, edges) in next.iter().enumerate() {
            for &target in edges.iter().flat_map(|e| &e.targets) {
                if sources[target].last() != Some(&source) {
                    sources[target].push(source);
                }
            }
        }
        WorkflowGraph {
            by_name,
            needs,
            dependents,
            next,
            sources,
            join: nodes.iter().map(|n| n.join).collect(),
            gated: nodes.iter().map(|n| n.gated).collect(),
            max_iterations: nodes.iter().map(|n| n.max_iterations).collect(),
            fanned_out: nodes.iter().map(|n| n.fanned_out).collect(),
            has_compensation: nodes.iter().map(|n| n.has_compensation).collect(),
            names,
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, task: usize) -> &str {
        &self.names[task]
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn needs(&self, task: usize) -> &[usize] {
        &self.needs[task]
    }

    pub fn dependents(&self, task: usize) -> &[usize] {
        &self.dependents[task]
    }

    /// The task's transitions, in file order.
    pub fn transitions(&self, task: usize) -> &[TransitionEdge] {
        &self.next[task]
    }

    /// The distinct tasks with a transition to `task`, in file order (what a `join` counts).
    pub fn sources(&self, task: usize) -> &[usize] {
        &self.sources[task]
    }

    pub fn is_transition_target(&self, task: usize) -> bool {
        !self.sources[task].is_empty()
    }

    pub fn join(&self, task: usize) -> Option<Join> {
        self.join[task]
    }

    /// `wait_for`: once ready the task run waits for a signal.
    pub fn is_gated(&self, task: usize) -> bool {
        self.gated[task]
    }

    pub fn max_iterations(&self, task: usize) -> u32 {
        self.max_iterations[task]
    }

    /// `for_each`: one task run per item.
    pub fn is_fanned_out(&self, task: usize) -> bool {
        self.fanned_out[task]
    }

    pub fn has_compensation(&self, task: usize) -> bool {
        self.has_compensation[task]
    }

    /// Tasks that start when the job run starts: no `needs`, and the target of no transition.
    pub fn entry_tasks(&self) -> Vec<usize> {
        (0..self.len()).filter(|&t| self.needs[t].is_empty() && self.sources[t].is_empty()).collect()
    }

    /// The tasks one step upstream of `task`: its needs, then its transition sources.
    pub fn direct_upstream(&self, task: usize) -> impl Iterator<Item = usize> + '_ {
        self.needs[task].iter().chain(&self.sources[task]).copied()
    }

    /// Every task from which `task` can be reached through `needs` or transitions, in no
    /// particular order. `task` itself is included only when it lies on a cycle of transitions.
    /// Costs the size of the ancestry, not of the job.
    pub fn upstream(&self, task: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut out = Vec::new();
        let mut stack: Vec<usize> = self.direct_upstream(task).collect();
        while let Some(t) = stack.pop() {
            if !seen[t] {
                seen[t] = true;
                out.push(t);
                stack.extend(self.direct_upstream(t));
            }
        }
        out
    }

    /// The tasks a job run makes a task run of when it is created (SPEC §2.2: a task never
    /// reached gets none): every task reached through `needs` alone — not a transition target,
    /// and no need behind one. The others get theirs when a transition or their needs reach
    /// them. Linear in tasks plus `needs` edges.
    pub fn made_at_start(&self) -> Vec<bool> {
        let mut made = vec![true; self.len()];
        let mut stack: Vec<usize> = (0..self.len()).filter(|&t| self.is_transition_target(t)).collect();
        while let Some(t) = stack.pop() {
            if std::mem::replace(&mut made[t], false) {
                stack.extend(&self.dependents[t]);
            }
        }
        made
    }

    /// True when a need of `task` is a transition target (a task that may run several times):
    /// `task` follows that need's latest task run, once nothing can reach the need again.
    pub fn needs_a_target(&self, task: usize) -> bool {
        self.needs[task].iter().any(|&n| self.is_transition_target(n))
    }

    /// True when `of` is upstream of `task` (see [`WorkflowGraph::upstream`]).
    pub fn is_upstream(&self, of: usize, task: usize) -> bool {
        self.upstream(task).contains(&of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, needs: &[&str], next: &[(TransitionOn, &[&str])]) -> TaskNode {
        TaskNode {
            name: name.to_string(),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            next: next
                .iter()
                .map(|(on, targets)| Transition {
                    on: *on,
                    when: None,
                    targets: targets.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            max_iterations: 10,
            ..TaskNode::default()
        }
    }

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort_unstable();
        v
    }

    /// write → review; review on failure → revise → review (a loop); review on success → ship;
    /// lint needs write; report needs lint.
    fn review_loop() -> WorkflowGraph {
        use TransitionOn::*;
        WorkflowGraph::new(vec![
            node("write", &[], &[(Success, &["review"])]),
            node("review", &[], &[(Failure, &["revise"]), (Success, &["ship"])]),
            node("revise", &[], &[(Always, &["review"])]),
            node("ship", &[], &[]),
            node("lint", &["write"], &[]),
            node("report", &["lint", "lint"], &[]),
        ])
    }

    #[test]
    fn edges_sources_and_entry_tasks() {
        let g = review_loop();
        assert_eq!(g.entry_tasks(), [0]);
        assert_eq!(g.sources(1), [0, 2], "review is reached from write and revise");
        assert_eq!(g.sources(3), [1]);
        assert!(g.is_transition_target(2) && !g.is_transition_target(4));
        assert_eq!(g.needs(5), [4], "needs are deduplicated");
        assert_eq!(g.dependents(0), [4]);
        let review = g.transitions(1);
        assert_eq!(
            review.iter().map(|e| (e.on, e.targets.clone())).collect::<Vec<_>>(),
            [(TransitionOn::Failure, vec![2]), (TransitionOn::Success, vec![3])]
        );
    }

    /// What a job run makes at once: the entry task and what follows it through `needs` alone;
    /// not the transition targets, nor what needs one (`publish`).
    #[test]
    fn made_at_start_is_what_needs_alone_reach() {
        let mut nodes: Vec<TaskNode> = Vec::new();
        let g = review_loop();
        assert_eq!(g.made_at_start(), [true, false, false, false, true, true]);
        assert!((0..g.len()).all(|t| !g.needs_a_target(t)));
        nodes.push(node("write", &[], &[(TransitionOn::Success, &["review"])]));
        nodes.push(node("review", &[], &[]));
        nodes.push(node("publish", &["review", "write"], &[]));
        nodes.push(node("announce", &["publish"], &[]));
        let g = WorkflowGraph::new(nodes);
        assert_eq!(g.made_at_start(), [true, false, false, false]);
        assert_eq!((0..g.len()).map(|t| g.needs_a_target(t)).collect::<Vec<_>>(), [false, false, true, false]);
    }

    #[test]
    fn upstream_follows_needs_and_transitions_through_cycles() {
        let g = review_loop();
        let table: &[(&str, &[usize])] = &[
            ("write", &[]),
            ("review", &[0, 1, 2]),
            ("revise", &[0, 1, 2]),
            ("ship", &[0, 1, 2]),
            ("lint", &[0]),
            ("report", &[0, 4]),
        ];
        for (name, want) in table {
            let task = g.index(name).expect("task");
            assert_eq!(sorted(g.upstream(task)), *want, "upstream of {name}");
        }
        assert!(g.is_upstream(2, 3) && !g.is_upstream(3, 1));
    }

    #[test]
    fn unknown_names_are_left_out() {
        let g = WorkflowGraph::new(vec![
            node("a", &["zz"], &[(TransitionOn::Success, &["b", "nope"])]),
            node("b", &[], &[]),
        ]);
        assert!(g.needs(0).is_empty());
        assert_eq!(g.transitions(0)[0].targets, [1]);
        assert_eq!(g.entry_tasks(), [0]);
    }

    #[test]
    fn one_source_with_several_transitions_to_a_target_counts_once() {
        use TransitionOn::*;
        let g = WorkflowGraph::new(vec![
            node("a", &[], &[(Success, &["j"]), (Failure, &["j"])]),
            node("b", &[], &[(Always, &["j"])]),
            node("j", &[], &[]),
        ]);
        assert_eq!(g.sources(2), [0, 1]);
        assert_eq!(g.entry_tasks(), [0, 1]);
    }

    #[test]
    fn built_from_a_job_with_per_task_facts() {
        let text = "[jobs.j.tasks.a]\nrun = 'x'\nwait_for = 'go'\ncompensate = 'undo'\nnext = [{ on = 'success', do = ['b'] }]\n\
                    [jobs.j.tasks.b]\nrun = 'x'\nfor_each = [1, 2]\nmax_iterations = 3\njoin = 'all'\n";
        let wf = crate::config::parse(std::path::Path::new("w.toml"), text).expect("valid");
        let g = WorkflowGraph::of(&wf.jobs[0]);
        assert!(g.is_gated(0) && !g.is_gated(1));
        assert!(g.has_compensation(0) && !g.has_compensation(1));
        assert!(g.is_fanned_out(1) && !g.is_fanned_out(0));
        assert_eq!((g.max_iterations(0), g.max_iterations(1)), (10, 3));
        assert_eq!((g.join(0), g.join(1)), (None, Some(Join::All)));
    }

    #[test]
    fn a_long_chain_and_a_long_cycle_stay_cheap_and_do_not_overflow() {
        let n = 20_000;
        let chain: Vec<TaskNode> = (0..n)
            .map(|i| {
                let next: Vec<String> = vec![format!("t{}", (i + 1) % n)];
                let mut t = node(&format!("t{i}"), &[], &[]);
                t.next = vec![Transition { on: TransitionOn::Success, when: None, targets: next }];
                t
            })
            .collect();
        let g = WorkflowGraph::new(chain);
        assert_eq!(g.upstream(0).len(), n, "every task of the cycle, itself included");
        assert!(g.entry_tasks().is_empty());
    }
}
