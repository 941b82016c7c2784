//! `for_each` on the core (SPEC §2.2): a fanned-out task, once ready, gets one task run per
//! item, all created in the step that reaches it (one commit, however many items); at most
//! `for_each_concurrency` of them hold a slot at once. To the graph the task stays one node: its
//! own task run is `running` while its items run and ends once they all ended — `succeeded`
//! when every item did (at once for no items), else dead with the first failed item's reason.
//! The rules (items, caps, slots, outcome) are `model::fanout`'s; this carries them out.

use std::collections::HashMap;

use crate::config::ForEach;
use crate::model::fanout::{self, FanOut, FanOutOutcome, ItemState};
use crate::model::graph;
use crate::model::{FailReason, TaskState};

use super::input::{Env, TaskNote, Write};
use super::state::{Kind, TaskRun};
use super::step::Step;

/// One fanned-out task's items in this job run.
#[derive(Debug, Clone)]
pub struct Node {
    pub fan: FanOut,
    /// The task run index (in `RunState::tasks`) of each item, by item index.
    pub runs: Vec<usize>,
}

/// The fan-outs of stored task runs (a resume), by their node's index: items grouped by the
/// task run of their task and iteration that is not an item, states counted.
pub fn nodes_of(tasks: &[TaskRun]) -> HashMap<usize, Node> {
    let node_of: HashMap<(usize, u32), usize> = tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.is_extra())
        .map(|(i, t)| ((t.task_index, t.iteration), i))
        .collect();
    let mut runs: HashMap<usize, Vec<(u32, usize)>> = HashMap::new();
    // An item a `retry --from` left out is history, not one of its node's items.
    let counted = |t: &TaskRun| t.reason != Some(FailReason::NotInList);
    for (i, t) in tasks.iter().enumerate().filter(|(_, t)| counted(t)) {
        if let (Some(k), Kind::Task, Some(&node)) = (t.item_index, t.kind, node_of.get(&(t.task_index, t.iteration))) {
            runs.entry(node).or_default().push((k, i));
        }
    }
    runs.into_iter()
        .map(|(task, mut items)| {
            items.sort_unstable();
            let mut fan = FanOut::new(items.len());
            for (k, &(_, i)) in items.iter().enumerate() {
                let _ = fan.set(k, tasks[i].state.into());
            }
            (task, Node { fan, runs: items.into_iter().map(|(_, i)| i).collect() })
        })
        .collect()
}

impl TaskRun {
    /// A new extra task run of `of`'s task (defined by `def`), its iteration and item: a fan-out
    /// item (the caller sets its index) or a compensation (the caller sets kind and target).
    pub fn extra_of(of: &TaskRun, def: &crate::config::TaskDef, id: u64, now_ms: u64) -> TaskRun {
        TaskRun {
            priority: of.priority,
            item_index: of.item_index,
            item: of.item.clone(),
            kind: Kind::Task,
            ..TaskRun::new(id, of.task_index, def, of.iteration, now_ms)
        }
    }
}

impl<E: Env> Step<'_, E> {
    /// Task run `i` of a fanned-out task is ready: its items are made and the first ones
    /// queued; it ends at once when there are no items (or no items to be had).
    pub(super) fn fan_out(&mut self, i: usize) {
        let items = match self.s.def(i).for_each.clone() {
            Some(ForEach::Template(text)) => {
                self.env.render_for_each(self.s, i, &text).and_then(|text| fanout::items_from_rendered(&text))
            }
            Some(ForEach::List(items)) => fanout::items_from_list(items),
            Some(ForEach::Matrix(axes)) => fanout::matrix_items(&axes),
            None => Ok(Vec::new()),
        };
        self.s.set_state(i, TaskState::Running);
        let t = &mut self.s.tasks[i];
        t.started_at_ms.get_or_insert(self.now);
        self.fx.writes.push(Write::TaskRun(i));
        // `retry --from` runs a fan-out again that has items already: item k's task run is
        // item k again (a new series of attempts), so the same item keeps one history.
        let earlier = self.s.fanouts.remove(&i).map_or_else(Vec::new, |n| n.runs);
        let items = match items {
            Ok(items) => items,
            Err(why) => {
                // It would fail the same way again: permanent, like any template error.
                self.s.tasks[i].detail = Some(crate::sanitize::sanitize(&why));
                self.leave_out(&earlier);
                return self.end_node(i, TaskState::Dead, Some(FailReason::TemplateError));
            }
        };
        self.leave_out(earlier.get(items.len()..).unwrap_or_default());
        if items.is_empty() {
            return self.end_node(i, TaskState::Succeeded, None);
        }
        let node = self.s.tasks[i].clone();
        let mut runs = Vec::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            let r = match earlier.get(k) {
                Some(&r) => {
                    self.s.set_state(r, TaskState::Pending);
                    self.s.tasks[r].reset_for_rerun();
                    r
                }
                None => {
                    let mut run = TaskRun::extra_of(&node, self.s.def(i), self.env.next_task_run_id(), self.now);
                    run.item_index = Some(k as u32);
                    self.s.push_run(run)
                }
            };
            self.s.tasks[r].item = Some(fanout::item_json(item));
            self.fx.writes.push(Write::TaskRun(r));
            runs.push(r);
        }
        self.s.fanouts.insert(i, Node { fan: FanOut::new(items.len()), runs });
        self.start_items(i);
    }

    /// Items of an earlier fan-out that the re-rendered list no longer has: skipped
    /// (`not_in_list`), kept as history, no longer counted by their node.
    fn leave_out(&mut self, runs: &[usize]) {
        for &r in runs {
            self.s.set_state(r, TaskState::Skipped);
            let t = &mut self.s.tasks[r];
            t.reason = Some(FailReason::NotInList);
            t.detail = Some("no longer in the for_each list (retry --from)".into());
            t.ended_at_ms = Some(self.now);
            self.fx.writes.push(Write::TaskRun(r));
            self.task_note(r, TaskNote::Skipped);
        }
    }

    /// On a resume: a running fan-out with a free slot and a pending item (a retried item
    /// stored before its slot came) starts it, so nothing waits for an end that will not come.
    pub(super) fn resume_items(&mut self) {
        let running: Vec<usize> =
            self.s.fanouts.keys().copied().filter(|&n| self.s.tasks[n].state == TaskState::Running).collect();
        for node in running {
            self.start_items(node);
        }
    }

    /// Queues as many pending items of node `i` as its `for_each_concurrency` has slots for.
    fn start_items(&mut self, i: usize) {
        let cap = self.s.def(i).for_each_concurrency;
        let Some(node) = self.s.fanouts.get(&i) else { return };
        let start: Vec<(usize, usize)> = node.fan.next_to_start(cap).into_iter().map(|k| (k, node.runs[k])).collect();
        for (k, r) in start {
            self.set_item(i, k, r, TaskState::Queued);
            self.queue_extra(r);
        }
    }

    fn set_item(&mut self, node: usize, k: usize, r: usize, to: TaskState) {
        self.s.set_state(r, to);
        if let Some(n) = self.s.fanouts.get_mut(&node) {
            let _ = n.fan.set(k, to.into());
        }
    }

    /// Extra run `r` (already `queued`) goes to its queue.
    pub(super) fn queue_extra(&mut self, r: usize) {
        let t = &mut self.s.tasks[r];
        t.queued_at_ms = Some(self.now);
        t.enqueue_seq = self.env.next_enqueue_seq();
        let series_start = (t.series_start > 1).then_some(t.series_start);
        self.fx.enqueue.push(r);
        self.fx.writes.push(Write::TaskRun(r));
        self.task_note(r, TaskNote::Queued { series_start });
    }

    /// Extra run `r` ended for good (or was skipped): its fan-out or its saga moves on.
    pub(super) fn extra_ended(&mut self, r: usize) {
        self.settle = true;
        let t = &self.s.tasks[r];
        if t.kind == Kind::Compensation {
            self.compensation_ended(r);
            return;
        }
        let Some(k) = t.item_index.map(|k| k as usize) else { return };
        let Some(node) = self.node_of(r) else { return };
        let state = t.state;
        if let Some(n) = self.s.fanouts.get_mut(&node) {
            let _ = n.fan.set(k, state.into());
        }
        let fail_fast = self.s.job().fail_fast && graph::is_failing(&self.s.states);
        if fail_fast && state.is_unsuccessful_end() {
            self.kill_running(FailReason::Cancelled);
        }
        if fail_fast || self.s.budget_spent || self.s.job_run.cancel_requested || self.s.stopping {
            if !self.s.stopping {
                self.skip_pending_items(node);
            }
        } else {
            self.start_items(node);
        }
        let outcome = self.s.fanouts.get(&node).map(|n| n.fan.outcome());
        if self.s.tasks[node].state != TaskState::Running {
            return;
        }
        match outcome {
            Some(FanOutOutcome::Succeeded) => self.end_node(node, TaskState::Succeeded, None),
            Some(FanOutOutcome::Failed) if self.s.job_run.cancel_requested || self.first_failed_was_cancelled(node) => {
                self.end_node(node, TaskState::Cancelled, Some(FailReason::Cancelled))
            }
            Some(FanOutOutcome::Failed) => {
                let (reason, detail) = self.first_failed_item(node);
                self.s.tasks[node].detail = Some(detail);
                self.end_node(node, TaskState::Dead, reason)
            }
            _ => {}
        }
    }

    /// The node (the fanned-out task's own run, same task and iteration) of item run `r`.
    pub(super) fn node_of(&self, r: usize) -> Option<usize> {
        let t = &self.s.tasks[r];
        let same = |n: &usize| self.s.tasks[*n].task_index == t.task_index && self.s.tasks[*n].iteration == t.iteration;
        self.s.fanouts.keys().copied().find(same)
    }

    /// No new item of node `i` will start (fail_fast, budget, cancel): the rest are skipped.
    fn skip_pending_items(&mut self, i: usize) {
        let Some(node) = self.s.fanouts.get(&i).filter(|n| n.fan.count(ItemState::Pending) > 0) else { return };
        let pending: Vec<(usize, usize)> = node
            .runs
            .iter()
            .enumerate()
            .filter(|&(_, &r)| self.s.tasks[r].state == TaskState::Pending)
            .map(|(k, &r)| (k, r))
            .collect();
        for (k, r) in pending {
            self.set_item(i, k, r, TaskState::Skipped);
            self.s.tasks[r].ended_at_ms = Some(self.now);
            self.fx.writes.push(Write::TaskRun(r));
            self.task_note(r, TaskNote::Skipped);
        }
    }

    /// A person cancelled the fan-out (or its first failed item): the node is cancelled, not dead.
    fn first_failed_was_cancelled(&self, i: usize) -> bool {
        let runs = &self.s.fanouts[&i].runs;
        runs.iter().map(|&r| self.s.tasks[r].state).find(|s| *s != TaskState::Succeeded) == Some(TaskState::Cancelled)
    }

    /// Why node `i` failed: its first item that did not succeed.
    fn first_failed_item(&self, i: usize) -> (Option<FailReason>, String) {
        let node = &self.s.fanouts[&i];
        let failed = node.fan.count(ItemState::Failed);
        let first = node.runs.iter().map(|&r| &self.s.tasks[r]).find(|t| t.state != TaskState::Succeeded);
        match first {
            Some(t) => (
                t.reason,
                format!(
                    "{failed} of {} items did not succeed; the first: item {} (task run {}) {}",
                    node.fan.total(),
                    t.item_index.unwrap_or(0),
                    t.id,
                    t.state.phrase()
                ),
            ),
            None => (None, format!("{failed} items did not succeed")),
        }
    }

    /// Node `i`'s own run ends `to`, as any task run does: transitions, `needs`, fail_fast.
    fn end_node(&mut self, i: usize, to: TaskState, reason: Option<FailReason>) {
        let t = &mut self.s.tasks[i];
        t.ended_at_ms = Some(self.now);
        t.reason = reason;
        let duration_ms = self.now.saturating_sub(t.started_at_ms.unwrap_or(self.now));
        let cost_usd_micros =
            self.s.fanouts.get(&i).map_or(0, |n| n.runs.iter().map(|&r| self.s.tasks[r].cost_usd_micros).sum());
        self.s.tasks[i].cost_usd_micros = cost_usd_micros;
        self.fx.writes.push(Write::TaskRun(i));
        match to {
            TaskState::Succeeded => {
                self.s.set_state(i, to);
                self.task_note(i, TaskNote::Succeeded { duration_ms, cost_usd_micros, cached_from: None });
                let matched = self.matching_transitions(i, true);
                self.after_task_ended(i, matched);
            }
            TaskState::Cancelled => {
                self.s.set_state(i, to);
                self.task_note(i, TaskNote::Cancelled { from_dead: false });
                self.after_task_ended(i, Vec::new());
            }
            _ => self.failed_for_good(i, reason.unwrap_or(FailReason::ExitCode)),
        }
    }

    /// A person's cancel of a running fan-out: its items that have not ended are cancelled; the
    /// node ends `cancelled` once they all ended.
    pub(super) fn cancel_items(&mut self, i: usize) -> String {
        if self.s.job_run.cancel_requested {
            return String::new(); // the whole run's cancel goes through the items itself
        }
        let open: Vec<usize> =
            self.s.fanouts[&i].runs.iter().copied().filter(|&r| !self.s.tasks[r].state.is_terminal()).collect();
        let said: Vec<String> = open.into_iter().map(|r| self.cancel_task(r)).collect();
        said.join("\n")
    }

    /// A person's retry of an extra run (an item, a compensation) or of a fanned-out node: the
    /// node's retry is its failed items' (a whole-run retry names them too: an item already
    /// reopened by its node is not refused).
    pub(super) fn retry_extra(&mut self, i: usize) -> Result<String, String> {
        let t = &self.s.tasks[i];
        if self.s.is_node(i) {
            let failed: Vec<usize> =
                self.s.fanouts[&i].runs.iter().copied().filter(|&r| self.s.tasks[r].state.is_retryable()).collect();
            if failed.is_empty() {
                return Err(format!("task run {} (fan-out of `{}`) has no dead or cancelled item", t.id, t.task));
            }
            let said: Vec<String> = failed.into_iter().map(|r| self.retry_extra(r)).collect::<Result<_, _>>()?;
            return Ok(said.join("\n"));
        }
        if !t.state.is_retryable() {
            let (id, phrase) = (t.id, t.state.phrase());
            if t.item_index.is_some() && !t.state.is_terminal() && t.series_start == t.attempt + 1 {
                return Ok(format!("task run {id} {phrase} (reopened with its fan-out)"));
            }
            return Err(format!("task run {id} {phrase}; only dead or cancelled task runs can be retried"));
        }
        let item = t.item_index.map(|k| k as usize);
        let node = self.node_of(i).unwrap_or(i);
        let reopened = self.s.reopen();
        match item {
            // It waits for a `for_each_concurrency` slot like any item (`start_items` below).
            Some(k) => self.set_item(node, k, i, TaskState::Pending),
            None => self.s.set_state(i, TaskState::Queued),
        }
        let t = &mut self.s.tasks[i];
        t.series_start = t.attempt + 1;
        (t.reason, t.detail, t.ended_at_ms) = (None, None, None);
        let (id, next) = (t.id, t.attempt + 1);
        if item.is_some() && self.s.tasks[node].state.is_terminal() {
            // The node runs again until this item ends; what it had skipped is looked at afresh.
            self.s.set_state(node, TaskState::Running);
            let t = &mut self.s.tasks[node];
            (t.reason, t.detail, t.ended_at_ms) = (None, None, None);
            self.fx.writes.push(Write::TaskRun(node));
            let changes = graph::reopen(&self.s.graph, &mut self.s.states);
            self.s.sync(&changes);
            self.apply(changes);
        }
        if let (Some(c), Some(saga)) = (self.s.tasks[i].compensates, self.s.saga.as_mut()) {
            let _ = saga.record(c, crate::model::saga::CompensationState::InFlight);
        }
        if reopened {
            self.fx.notes.push(super::input::Note::JobStarted { retry: true, from: None });
        }
        self.fx.writes.push(Write::JobRun);
        self.fx.writes.push(Write::TaskRun(i));
        if item.is_none() {
            self.queue_extra(i);
        } else {
            self.start_items(node);
        }
        if self.s.tasks[i].state == TaskState::Pending {
            return Ok(format!("task run {id} waits for a for_each_concurrency slot (attempt {next} next)"));
        }
        Ok(format!("task run {id} queued again (attempt {next} next)"))
    }
}
