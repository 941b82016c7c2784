//! An exhaustive check of the lease and fencing rules: a small cluster — machines, task runs of
//! one job run, a store with its clock — where every step is one of the moves below, explored
//! breadth first over all interleavings up to a time bound, with a visited set. Every state
//! reached is checked against the invariants; every state is then "healed" (no more failures)
//! and must end all its task runs. Proptests walk the same world at larger sizes at random.
//!
//! What the model means by the faults of issue #11 §7:
//! - a paused node (SIGSTOP) or a slow one: a machine's moves are interleaved arbitrarily with
//!   the store clock, so any move may come arbitrarily late — after its check (a claim before the
//!   start it leads to, a snapshot before the commit planned on it);
//! - a network partition: renewals and outcomes are messages, delivered in any order,
//!   arbitrarily late (also after their sender died and rejoined), outcomes twice with `resend`
//!   (a batch resent after its answer was lost); a renewal's answer arrives at once (a late one
//!   only makes the node believe less of its lease, which a late move of the node covers);
//! - kill -9: a machine forgets everything; its in-flight messages still arrive;
//! - node clocks: one rate for all clocks (monotonic clocks; drift is not modelled).
//!
//! The owner's commits are blind writes of whole records (what `store::Mutation` is), fenced by
//! the epoch alone: the model shows that the node lease's fences make them safe. The owner's
//! record of a task run (`task_runs.record`) is apart from the columns the claim writes: it
//! learns of a claim only from the runner's `Started` mail (or its own worker), so a claimer
//! that dies before that is an unheard claim, which [`dead_runner`] must count.
//!
//! A [`Flaw`] replaces one rule by a broken one; the tests assert the checker finds each, so the
//! checker cannot pass by checking nothing.
//!
//! Invariants: a task run never has two attempts the store holds running, and no attempt is
//! recorded twice (an outcome and an interruption, or two outcomes); a taken outcome is the
//! current attempt's; the commits of one epoch come from one node; every claimed attempt is
//! counted (an interrupted one too); no attempt runs after one succeeded; a node never believes
//! its lease lasts longer than the store holds it; and, once faults stop, every task run ends.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};

use super::*;
use crate::model::policy::{AfterAttempt, RunSoFar};

/// Milliseconds per tick of the model's clocks.
const TICK_MS: u64 = 1_000;

/// The size of the world explored.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub machines: usize,
    pub tasks: usize,
    /// The store clock stops here (in ticks); healing may go past it.
    pub max_time: u16,
    /// Lease in ticks (renewed every third of it).
    pub lease: u16,
    pub max_attempts: u32,
    /// Joins per machine, the first included (a rejoin after expiry or a crash is another).
    pub max_joins: u8,
    /// Crashes (kill -9) in the whole run.
    pub max_crashes: u8,
    /// Outcomes may arrive twice (a batch resent after its answer was lost).
    pub resend: bool,
    /// Heal one state in this many (1: all).
    pub heal_every: usize,
    /// Give up (and fail) past this many states.
    pub max_states: usize,
}

impl Bounds {
    /// The default: a few seconds in a debug build.
    pub fn small() -> Bounds {
        Bounds {
            machines: 2,
            tasks: 1,
            max_time: 3,
            lease: 3,
            max_attempts: 2,
            max_joins: 1,
            max_crashes: 0,
            resend: false,
            heal_every: 1,
            max_states: 2_000_000,
        }
    }

    /// `GAFFER_LEASE_CHECK=big`: one more tick of the store clock — 885k states instead of 180k
    /// (about two minutes in a debug build on a busy machine).
    pub fn big() -> Bounds {
        Bounds { max_time: 4, ..Bounds::small() }
    }

    fn lease_ms(self) -> u64 {
        u64::from(self.lease) * TICK_MS
    }
}

/// A rule replaced by a broken one, to show that the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    None,
    /// Outcomes are taken without asking whether the reporting node's lease is live.
    OutcomeIgnoresLease,
    /// Outcomes are taken without asking which attempt is current.
    OutcomeIgnoresAttempt,
    /// A renewal revives a lease that already passed.
    RenewRevives,
    /// Commits are taken from any node that once owned the job run, whatever the epoch.
    CommitIgnoresEpoch,
    /// Adoption does not ask whether the owner is dead.
    AdoptFromLiveOwner,
    /// A reaped attempt is not counted: its number is handed out again.
    InterruptedUncounted,
    /// A row claimed by a node that died before its owner heard the start is written back as
    /// the owner's record has it (queued at the old count) instead of counted: what gaffer did
    /// before `model::lease::dead_runner` had [`DeadRunner::Unheard`].
    UnheardWrittenBack,
}

/// What the store recorded of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rec {
    Running,
    Succeeded,
    Failed,
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TaskRow {
    /// The columns the claim, the fenced completion and the owner's commits write.
    fence: Fence,
    /// The owner's record of the task run (`task_runs.record`): its state and the attempts it
    /// counted. Only the owner's commits write it, so it lags the claim until the owner hears
    /// the start (a `Started` mail, or its own worker's claim, committed in its next group).
    record: (TaskState, u32),
    /// The latest `Started` mail the store holds for the task run (the attempt it names).
    mail: Option<u32>,
    attempts: Vec<Rec>,
}

/// What a machine plans to commit for a task run, from the snapshot it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Plan {
    /// The current attempt ended: move the task run to `next`.
    Decide { epoch: u64, next: TaskState },
    /// Attempt `attempt` runs on a dead node: record it interrupted, then `next`.
    Reap { epoch: u64, attempt: u32, next: TaskState },
    /// The owner heard attempt `attempt` start: its record says `running` as that attempt (a
    /// blind write of the row as `writer.rs`'s `PUT_TASK_RUNS` does it: the node a running row
    /// names is kept).
    Heard { epoch: u64, attempt: u32 },
    /// The row is written back as the owner's record has it.
    WriteBack { epoch: u64, state: TaskState, attempt: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Work {
    /// Claimed at the store, its process not started yet.
    Claimed {
        task: usize,
        attempt: u32,
    },
    Running {
        task: usize,
        attempt: u32,
    },
}

/// One machine's memory: what the node process knows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Machine {
    /// `None`: not joined (before its first join, after a crash or its own expiry).
    id: Option<NodeId>,
    joins: u8,
    believed_until: u16,
    last_sent: u16,
    renew_in_flight: bool,
    /// The epoch of the job run it believes it owns.
    owns: Option<u64>,
    /// One worker.
    work: Option<Work>,
    plans: Vec<Option<Plan>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Msg {
    Renew { id: NodeId, sent_at: u16 },
    Outcome { id: NodeId, task: usize, attempt: u32, ok: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct World {
    now: u16,
    /// `nodes.lease_until` by node id (ids are handed out in join order).
    leases: Vec<u16>,
    job: Ownership,
    tasks: Vec<TaskRow>,
    machines: Vec<Machine>,
    /// In flight, kept sorted so equal states hash equal.
    net: Vec<Msg>,
    crashes: u8,
    /// Ghost: the node whose commits were taken in each epoch.
    committers: Vec<Option<NodeId>>,
    /// Ghost: claims ever granted per task run.
    claims: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Action {
    Tick,
    Join(usize),
    SendRenew(usize),
    SelfExpire(usize),
    Crash(usize),
    Adopt(usize),
    Claim(usize, usize),
    Start(usize),
    Finish(usize, bool),
    Plan(usize, usize),
    Commit(usize, usize),
    Deliver(Msg),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Action::Tick => write!(f, "store clock ticks"),
            Action::Join(m) => write!(f, "m{m} joins"),
            Action::SendRenew(m) => write!(f, "m{m} sends a renewal"),
            Action::SelfExpire(m) => write!(f, "m{m} finds its lease expired: kills, drops, leaves"),
            Action::Crash(m) => write!(f, "m{m} is killed (kill -9)"),
            Action::Adopt(m) => write!(f, "m{m} adopts the job run"),
            Action::Claim(m, t) => write!(f, "m{m} claims t{t}"),
            Action::Start(m) => write!(f, "m{m} starts its claimed attempt"),
            Action::Finish(m, ok) => {
                write!(f, "m{m}'s attempt ends ({}), outcome sent", if ok { "ok" } else { "failed" })
            }
            Action::Plan(m, t) => write!(f, "m{m} reads t{t} and plans a commit"),
            Action::Commit(m, t) => write!(f, "m{m} commits its plan for t{t}"),
            Action::Deliver(msg) => write!(f, "store receives {msg:?}"),
        }
    }
}

/// A broken invariant: what, and the moves that led there from the start.
#[derive(Debug)]
pub struct Violation {
    pub what: String,
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "violation: {}", self.what)?;
        for (i, step) in self.trace.iter().enumerate() {
            writeln!(f, "  {:>2}. {step}", i + 1)?;
        }
        Ok(())
    }
}

/// The world with its bounds and the (possibly broken) rules it follows.
#[derive(Clone, Copy)]
struct Rules {
    bounds: Bounds,
    flaw: Flaw,
}

impl World {
    /// Every machine joined at time 0; machine 0 owns the job run (it was submitted there).
    fn start(b: Bounds) -> World {
        let machine = |m: usize| Machine {
            id: Some(m as NodeId),
            joins: 1,
            believed_until: b.lease,
            last_sent: 0,
            renew_in_flight: false,
            owns: (m == 0).then_some(1),
            work: None,
            plans: vec![None; b.tasks],
        };
        World {
            now: 0,
            leases: vec![b.lease; b.machines],
            job: Ownership { owner: Some(0), epoch: 1 },
            tasks: vec![
                TaskRow {
                    fence: Fence { state: TaskState::Queued, node: None, attempt: 0 },
                    record: (TaskState::Queued, 0),
                    mail: None,
                    attempts: vec![],
                };
                b.tasks
            ],
            machines: (0..b.machines).map(machine).collect(),
            net: vec![],
            crashes: 0,
            committers: vec![None, None],
            claims: vec![0; b.tasks],
        }
    }

    fn live(&self, id: NodeId) -> bool {
        is_live(u64::from(self.leases[id as usize]) * TICK_MS, self.ms())
    }

    fn ms(&self) -> u64 {
        u64::from(self.now) * TICK_MS
    }

    fn send(&mut self, msg: Msg) {
        let at = self.net.partition_point(|x| *x < msg);
        self.net.insert(at, msg);
    }

    fn all_ended(&self) -> bool {
        self.tasks.iter().all(|t| t.fence.state.is_terminal())
    }

    fn summary(&self) -> String {
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "t{i} {:?} node={:?} record={:?} mail={:?} attempts={:?}",
                    t.fence.state, t.fence.node, t.record, t.mail, t.attempts
                )
            })
            .collect();
        let ids: Vec<String> = self.machines.iter().enumerate().map(|(i, m)| format!("m{i}={:?}", m.id)).collect();
        format!(
            "now={} leases={:?} owner={:?}@{} {} [{}]",
            self.now,
            self.leases,
            self.job.owner,
            self.job.epoch,
            ids.join(" "),
            tasks.join("; ")
        )
    }
}

impl Rules {
    /// Every move possible from `w`.
    fn actions(&self, w: &World) -> Vec<Action> {
        let b = self.bounds;
        let mut out = Vec::new();
        if w.now < b.max_time {
            out.push(Action::Tick);
        }
        for (i, m) in w.machines.iter().enumerate() {
            self.machine_actions(w, i, m, &mut out);
        }
        out.extend(w.net.iter().copied().map(Action::Deliver));
        out.dedup();
        out
    }

    fn machine_actions(&self, w: &World, i: usize, m: &Machine, out: &mut Vec<Action>) {
        let b = self.bounds;
        let Some(id) = m.id else {
            if m.joins < b.max_joins {
                out.push(Action::Join(i));
            }
            return;
        };
        if w.crashes < b.max_crashes {
            out.push(Action::Crash(i));
        }
        let lease = own_lease(
            u64::from(m.believed_until) * TICK_MS,
            u64::from(m.last_sent) * TICK_MS,
            m.renew_in_flight,
            w.ms(),
            b.lease_ms(),
        );
        match lease {
            OwnLease::Expired => out.push(Action::SelfExpire(i)),
            OwnLease::RenewDue => out.push(Action::SendRenew(i)),
            OwnLease::Live => {}
        }
        // A node acts on its own belief; the store judges by its own clock.
        let believes_live = lease != OwnLease::Expired;
        let max_epoch = 1 + b.machines as u64 * u64::from(b.max_joins);
        if believes_live && w.job.epoch < max_epoch && self.adopt(w, id).is_some() {
            out.push(Action::Adopt(i));
        }
        match m.work {
            None if believes_live => {
                for t in 0..w.tasks.len() {
                    if claim(w.tasks[t].fence, &[], &[], id, w.live(id)).is_some() {
                        out.push(Action::Claim(i, t));
                    }
                }
            }
            None => {}
            Some(Work::Claimed { .. }) if believes_live => out.push(Action::Start(i)),
            Some(Work::Claimed { .. }) => {}
            // The process ends whatever the node believes; the store judges the outcome.
            Some(Work::Running { .. }) => out.extend([Action::Finish(i, true), Action::Finish(i, false)]),
        }
        if let Some(epoch) = m.owns {
            for t in 0..w.tasks.len() {
                match m.plans[t] {
                    Some(_) => out.push(Action::Commit(i, t)),
                    None if self.plan(w, t, epoch).is_some() => out.push(Action::Plan(i, t)),
                    None => {}
                }
            }
        }
    }

    fn adopt(&self, w: &World, me: NodeId) -> Option<Ownership> {
        let owner_live = w.job.owner.is_some_and(|o| w.live(o)) && self.flaw != Flaw::AdoptFromLiveOwner;
        adoption(w.job, me, w.live(me), owner_live)
    }

    /// What an owner holding `epoch` would commit for task run `t`, read from the store now.
    fn plan(&self, w: &World, t: usize, epoch: u64) -> Option<Plan> {
        let row = &w.tasks[t];
        let fence = row.fence;
        let (record_state, record_attempt) = row.record;
        let reap = |attempt: u32| Plan::Reap { epoch, attempt, next: self.retry(attempt, true) };
        let write_back = Plan::WriteBack { epoch, state: record_state, attempt: record_attempt };
        match dead_runner(fence, fence.node.is_some_and(|n| w.live(n)), record_state, record_attempt) {
            DeadRunner::Interrupted(n) => return Some(reap(n)),
            DeadRunner::Unheard(_) if self.flaw == Flaw::UnheardWrittenBack => return Some(write_back),
            DeadRunner::Unheard(n) => return Some(reap(n)),
            DeadRunner::WriteBack => return Some(write_back),
            DeadRunner::Nothing => {}
        }
        if fence.state == TaskState::Running && fence.node.is_none() {
            let next = match row.attempts.last() {
                Some(Rec::Succeeded) => TaskState::Succeeded,
                _ => self.retry(fence.attempt, false),
            };
            return Some(Plan::Decide { epoch, next });
        }
        // A `Started` mail of the attempt the row runs, not yet in the record. (A late one of an
        // attempt already counted is only a kill of that attempt: nothing to write.)
        let heard = row.mail.filter(|&n| fence.state == TaskState::Running && fence.attempt == n);
        match heard {
            Some(attempt) if row.record != (TaskState::Running, attempt) => Some(Plan::Heard { epoch, attempt }),
            _ => None,
        }
    }

    /// Queued again or dead, by the retry policy, after `attempts` attempts.
    fn retry(&self, attempts: u32, interrupted: bool) -> TaskState {
        let policy =
            RetryPolicy { max_attempts: self.bounds.max_attempts, poison_after_crashes: 0, ..RetryPolicy::default() };
        let run = RunSoFar {
            attempts_in_series: attempts,
            cost_usd_micros: 0,
            budget_usd_micros: None,
            max_cost_usd_micros: None,
            crashes_in_a_row: 0,
        };
        let after = if interrupted {
            after_interrupted(&policy, run, 0.0)
        } else {
            let failed = AttemptOutcome { failure: Some(FailReason::ExitCode), exit_code: Some(1) };
            after_attempt(&policy, failed, run, 0.0)
        };
        match after {
            AfterAttempt::Retry { .. } => TaskState::Queued,
            AfterAttempt::Succeeded => TaskState::Succeeded,
            AfterAttempt::Dead { .. } => TaskState::Dead,
            AfterAttempt::Cancelled => TaskState::Cancelled,
        }
    }

    /// The world after `a`, or the invariant `a` broke.
    fn apply(&self, w: &World, a: Action) -> Result<World, String> {
        let b = self.bounds;
        let mut w = w.clone();
        match a {
            Action::Tick => w.now += 1,
            Action::Join(i) => {
                let id = w.leases.len() as NodeId;
                w.leases.push(w.now + b.lease);
                let m = &mut w.machines[i];
                let plans = vec![None; b.tasks];
                *m = Machine {
                    id: Some(id),
                    joins: m.joins + 1,
                    believed_until: w.now + b.lease,
                    last_sent: w.now,
                    renew_in_flight: false,
                    owns: None,
                    work: None,
                    plans,
                };
            }
            Action::SendRenew(i) => {
                let m = &mut w.machines[i];
                let id = m.id.ok_or("renewal without an id")?;
                m.last_sent = w.now;
                m.renew_in_flight = true;
                let sent_at = w.now;
                w.send(Msg::Renew { id, sent_at });
            }
            Action::SelfExpire(i) => {
                let m = &mut w.machines[i];
                let attempts: Vec<(u64, u32)> = match m.work {
                    Some(Work::Claimed { task, attempt } | Work::Running { task, attempt }) => {
                        vec![(task as u64, attempt)]
                    }
                    None => vec![],
                };
                let job_runs: Vec<u64> = m.owns.map(|_| 0).into_iter().collect();
                let duties = expired_duties(&attempts, &job_runs);
                if !duties.kill.is_empty() {
                    // Killed before they end: they never report.
                    m.work = None;
                }
                if !duties.drop_job_runs.is_empty() {
                    m.owns = None;
                    m.plans = vec![None; b.tasks];
                }
                if duties.rejoin {
                    m.id = None;
                    m.renew_in_flight = false;
                }
            }
            Action::Crash(i) => {
                // kill -9: the node forgets everything; its orphans die with the group (or are
                // killed when it starts again), so they never report.
                w.crashes += 1;
                let m = &mut w.machines[i];
                *m = Machine {
                    id: None,
                    owns: None,
                    work: None,
                    renew_in_flight: false,
                    plans: vec![None; b.tasks],
                    ..m.clone()
                };
            }
            Action::Adopt(i) => {
                let id = w.machines[i].id.ok_or("adopt without an id")?;
                w.job = self.adopt(&w, id).ok_or("adoption refused")?;
                w.machines[i].owns = Some(w.job.epoch);
                w.committers.push(None);
            }
            Action::Claim(i, t) => self.apply_claim(&mut w, i, t)?,
            Action::Start(i) => {
                if let Some(Work::Claimed { task, attempt }) = w.machines[i].work {
                    w.machines[i].work = Some(Work::Running { task, attempt });
                    // The `Started` mail is a row the runner inserts as it starts (a late
                    // insert is this move made late).
                    let mail = &mut w.tasks[task].mail;
                    *mail = Some(mail.map_or(attempt, |m| m.max(attempt)));
                }
            }
            Action::Finish(i, ok) => {
                let m = &mut w.machines[i];
                let (Some(id), Some(Work::Running { task, attempt })) = (m.id, m.work) else {
                    return Err("no attempt to finish".into());
                };
                m.work = None;
                w.send(Msg::Outcome { id, task, attempt, ok });
                if b.resend {
                    // A node resends its batch when the answer to the first send was lost.
                    w.send(Msg::Outcome { id, task, attempt, ok });
                }
            }
            Action::Plan(i, t) => {
                let epoch = w.machines[i].owns.ok_or("plan without ownership")?;
                w.machines[i].plans[t] = self.plan(&w, t, epoch);
            }
            Action::Commit(i, t) => self.apply_commit(&mut w, i, t)?,
            Action::Deliver(msg) => {
                let at = w.net.iter().position(|x| *x == msg).ok_or("no such message")?;
                w.net.remove(at);
                self.deliver(&mut w, msg)?;
            }
        }
        check_state(&w)?;
        Ok(w)
    }

    fn apply_claim(&self, w: &mut World, i: usize, t: usize) -> Result<(), String> {
        let id = w.machines[i].id.ok_or("claim without an id")?;
        let fence = claim(w.tasks[t].fence, &[], &[], id, w.live(id)).ok_or("claim refused")?;
        let row = &mut w.tasks[t];
        row.fence = fence;
        row.attempts.push(Rec::Running);
        w.claims[t] += 1;
        w.machines[i].work = Some(Work::Claimed { task: t, attempt: fence.attempt });
        Ok(())
    }

    fn apply_commit(&self, w: &mut World, i: usize, t: usize) -> Result<(), String> {
        let m = &mut w.machines[i];
        let (Some(id), Some(plan)) = (m.id, m.plans[t].take()) else { return Err("no plan".into()) };
        let epoch = match plan {
            Plan::Decide { epoch, .. }
            | Plan::Reap { epoch, .. }
            | Plan::Heard { epoch, .. }
            | Plan::WriteBack { epoch, .. } => epoch,
        };
        let accepted = commit_accepted(w.job, id, epoch) || self.flaw == Flaw::CommitIgnoresEpoch;
        if !accepted {
            // Fenced out: the JobRun actor stops; another node owns the job run now.
            if m.owns == Some(epoch) {
                m.owns = None;
            }
            return Ok(());
        }
        let current = w.job.epoch as usize;
        match w.committers[current] {
            Some(other) if other != id => {
                return Err(format!("nodes {other} and {id} both had commits taken in epoch {current}"));
            }
            _ => w.committers[current] = Some(id),
        }
        // Blind writes of whole records, as the owner's batch is.
        let row = &mut w.tasks[t];
        match plan {
            Plan::Decide { next, .. } => {
                row.fence = Fence { state: next, node: None, attempt: row.fence.attempt };
                row.record = (next, row.fence.attempt);
            }
            Plan::Heard { attempt, .. } => {
                let node = if row.fence.state == TaskState::Running { row.fence.node } else { Some(id) };
                row.fence = Fence { state: TaskState::Running, node, attempt };
                row.record = (TaskState::Running, attempt);
            }
            Plan::WriteBack { state, attempt, .. } => row.fence = Fence { state, node: None, attempt },
            Plan::Reap { attempt, next, .. } => {
                let rec = &mut row.attempts[attempt as usize - 1];
                if *rec != Rec::Running {
                    return Err(format!(
                        "t{t} attempt {attempt} recorded twice: {rec:?}, then interrupted by the reaper"
                    ));
                }
                *rec = Rec::Interrupted;
                let mut counted = row.fence.attempt;
                if self.flaw == Flaw::InterruptedUncounted {
                    row.attempts.pop();
                    counted -= 1;
                }
                row.fence = Fence { state: next, node: None, attempt: counted };
                row.record = (next, counted);
            }
        }
        Ok(())
    }

    fn deliver(&self, w: &mut World, msg: Msg) -> Result<(), String> {
        match msg {
            Msg::Renew { id, sent_at } => {
                let until = u64::from(w.leases[id as usize]) * TICK_MS;
                let renewed = match self.flaw {
                    Flaw::RenewRevives => Some(lease_until_ms(w.ms(), self.bounds.lease_ms())),
                    _ => renewal(until, w.ms(), self.bounds.lease_ms()),
                };
                let Some(until) = renewed else { return Ok(()) };
                w.leases[id as usize] = (until / TICK_MS) as u16;
                // The answer reaches the node at once: a late answer only makes it believe less
                // (what a delay of its next move already covers).
                if let Some(m) = w.machines.iter_mut().find(|m| m.id == Some(id)) {
                    let believed = believed_until_ms(u64::from(sent_at) * TICK_MS, self.bounds.lease_ms()) / TICK_MS;
                    m.believed_until = m.believed_until.max(believed as u16);
                    m.renew_in_flight = false;
                }
            }
            Msg::Outcome { id, task, attempt, ok } => self.deliver_outcome(w, id, task, attempt, ok)?,
        }
        Ok(())
    }

    fn deliver_outcome(&self, w: &mut World, id: NodeId, task: usize, attempt: u32, ok: bool) -> Result<(), String> {
        let row = &w.tasks[task];
        let mut fence = row.fence;
        if self.flaw == Flaw::OutcomeIgnoresAttempt {
            fence.attempt = attempt;
            fence.node = Some(id);
        }
        let live = w.live(id) || self.flaw == Flaw::OutcomeIgnoresLease;
        if outcome_accepted(fence, id, attempt, live).is_err() {
            return Ok(());
        }
        if attempt != row.fence.attempt {
            return Err(format!(
                "t{task}: outcome of attempt {attempt} taken while attempt {} is current",
                row.fence.attempt
            ));
        }
        let row = &mut w.tasks[task];
        let rec = &mut row.attempts[attempt as usize - 1];
        if *rec != Rec::Running {
            return Err(format!("t{task} attempt {attempt} recorded twice: {rec:?}, then an outcome from node {id}"));
        }
        *rec = if ok { Rec::Succeeded } else { Rec::Failed };
        row.fence.node = None;
        Ok(())
    }
}

/// The invariants every reachable state keeps.
fn check_state(w: &World) -> Result<(), String> {
    for (t, row) in w.tasks.iter().enumerate() {
        let running = row.attempts.iter().filter(|r| **r == Rec::Running).count();
        if running > 1 {
            return Err(format!("t{t} has {running} attempts the store holds running: {:?}", row.attempts));
        }
        if row.attempts.len() as u32 != row.fence.attempt || w.claims[t] != row.fence.attempt {
            return Err(format!(
                "t{t}: {} attempts claimed, {} recorded, attempt counter {}: an attempt went uncounted",
                w.claims[t],
                row.attempts.len(),
                row.fence.attempt
            ));
        }
        let last_running = row.attempts.last() == Some(&Rec::Running);
        if last_running != (row.fence.state == TaskState::Running && row.fence.node.is_some())
            || running != usize::from(last_running)
        {
            return Err(format!(
                "t{t}: the running attempt is not the current one: {:?} {:?}",
                row.fence, row.attempts
            ));
        }
        let succeeded = row.attempts.iter().filter(|r| **r == Rec::Succeeded).count();
        if succeeded > 1 || (succeeded == 1 && row.attempts.last() != Some(&Rec::Succeeded)) {
            return Err(format!("t{t} ran again after an attempt succeeded: {:?}", row.attempts));
        }
    }
    for (i, m) in w.machines.iter().enumerate() {
        if let Some(id) = m.id
            && m.believed_until > w.leases[id as usize]
        {
            return Err(format!(
                "m{i} believes its lease lasts until {}, the store ends it at {}",
                m.believed_until, w.leases[id as usize]
            ));
        }
    }
    Ok(())
}

/// What the explorer saw.
#[derive(Debug, Default)]
pub struct Report {
    pub states: usize,
    pub healed: usize,
    pub seen: Coverage,
}

/// Moves that show the world reached the cases the fences are for (counted per transition).
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    pub adoptions: usize,
    /// Attempts recorded `interrupted` by an owner.
    pub reaps: usize,
    /// Outcomes the store refused.
    pub refused_outcomes: usize,
    /// Commits refused by the epoch fence.
    pub fenced_commits: usize,
    /// Reaps of an attempt whose start the owner never heard (its record still `queued`).
    pub unheard_reaps: usize,
}

impl Coverage {
    fn count(&mut self, before: &World, action: Action, after: &World) {
        let interrupted =
            |w: &World| w.tasks.iter().flat_map(|t| &t.attempts).filter(|r| **r == Rec::Interrupted).count();
        match action {
            Action::Adopt(_) => self.adoptions += 1,
            Action::Commit(_, t) if interrupted(after) > interrupted(before) => {
                self.reaps += 1;
                if before.tasks[t].record.0 == TaskState::Queued {
                    self.unheard_reaps += 1;
                }
            }
            Action::Commit(i, _) if after.machines[i].owns.is_none() && before.machines[i].owns.is_some() => {
                self.fenced_commits += 1
            }
            Action::Deliver(Msg::Outcome { .. }) if after.tasks == before.tasks => self.refused_outcomes += 1,
            _ => {}
        }
    }

    fn all_seen(&self) -> bool {
        self.adoptions > 0
            && self.reaps > 0
            && self.refused_outcomes > 0
            && self.fenced_commits > 0
            && self.unheard_reaps > 0
    }
}

/// Explores every interleaving within `bounds`, breadth first: the first broken invariant (with
/// a shortest trace) or what was seen. Visited states are kept as 64-bit fingerprints (hash
/// compaction, as SPIN's bitstate); a trace is rebuilt by replaying its moves from the start.
pub fn explore(bounds: Bounds, flaw: Flaw) -> Result<Report, Violation> {
    let rules = Rules { bounds, flaw };
    let start = World::start(bounds);
    let mut seen = HashSet::from([fingerprint(&start)]);
    let mut parents: Vec<Option<(u32, Action)>> = vec![None];
    let mut frontier = VecDeque::from([(0u32, start)]);
    let mut healed = 0;
    let mut seen_moves = Coverage::default();
    while let Some((at, world)) = frontier.pop_front() {
        if (at as usize).is_multiple_of(bounds.heal_every) {
            if let Err((what, moves)) = heal(&rules, &world) {
                let mut found = violation(&rules, &parents, at, None, what);
                found.trace.extend(
                    replay(&healing_rules(&rules), world, &moves).into_iter().map(|step| format!("(healing) {step}")),
                );
                return Err(found);
            }
            healed += 1;
        }
        for action in rules.actions(&world) {
            let next = match rules.apply(&world, action) {
                Ok(next) => next,
                Err(what) => return Err(violation(&rules, &parents, at, Some(action), what)),
            };
            seen_moves.count(&world, action, &next);
            if seen.insert(fingerprint(&next)) {
                if parents.len() >= bounds.max_states {
                    let what = format!("more than {} states: shrink the bounds", bounds.max_states);
                    return Err(Violation { what, trace: vec![] });
                }
                frontier.push_back((parents.len() as u32, next));
                parents.push(Some((at, action)));
            }
        }
    }
    Ok(Report { states: parents.len(), healed, seen: seen_moves })
}

fn fingerprint(w: &World) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    w.hash(&mut h);
    h.finish()
}

/// The moves from the start to state `at` (then `last`), replayed to show each state reached.
fn violation(
    rules: &Rules,
    parents: &[Option<(u32, Action)>],
    mut at: u32,
    last: Option<Action>,
    what: String,
) -> Violation {
    let mut moves: Vec<Action> = last.into_iter().collect();
    while let Some((parent, action)) = parents[at as usize] {
        moves.push(action);
        at = parent;
    }
    moves.reverse();
    let start = World::start(rules.bounds);
    let mut trace = vec![format!("start → {}", start.summary())];
    trace.extend(replay(rules, start, &moves));
    Violation { what, trace }
}

/// Each move from `world` and the state it led to (or what it broke).
fn replay(rules: &Rules, mut world: World, moves: &[Action]) -> Vec<String> {
    let mut steps = Vec::new();
    for &action in moves {
        match rules.apply(&world, action) {
            Ok(next) => {
                steps.push(format!("{action} → {}", next.summary()));
                world = next;
            }
            Err(broken) => steps.push(format!("{action} → broken: {broken}")),
        }
    }
    steps
}

/// From `w`, no more faults: messages arrive at once, machines renew in time, an expired one
/// rejoins, a live one adopts, reaps, claims, runs and succeeds. Every task run must end.
/// On failure: what broke, and the healing moves made until then.
fn heal(rules: &Rules, w: &World) -> Result<(), (String, Vec<Action>)> {
    let healing = healing_rules(rules);
    let mut w = w.clone();
    let mut moves = Vec::new();
    let limit = 40 + 12 * u32::from(rules.bounds.lease) * rules.bounds.max_attempts * rules.bounds.tasks as u32;
    for _ in 0..limit {
        if w.all_ended() {
            return Ok(());
        }
        let action = healing_move(&healing, &w);
        moves.push(action);
        w = match healing.apply(&w, action) {
            Ok(next) => next,
            Err(what) => return Err((format!("while healing: {what}"), moves)),
        };
    }
    Err((format!("no progress: task runs still open after {limit} healing moves"), moves))
}

/// No more crashes, rejoins as needed, time without end.
fn healing_rules(rules: &Rules) -> Rules {
    Rules {
        bounds: Bounds { max_joins: u8::MAX, max_crashes: 0, max_time: u16::MAX, ..rules.bounds },
        flaw: rules.flaw,
    }
}

/// The first useful move, in the order a healthy cluster makes them; time passes last.
fn healing_move(rules: &Rules, w: &World) -> Action {
    let actions = rules.actions(w);
    let rank = |a: &Action| match a {
        Action::Deliver(_) => 0,
        Action::SelfExpire(_) | Action::Join(_) => 1,
        Action::SendRenew(_) => 2,
        Action::Commit(..) => 3,
        Action::Plan(..) => 4,
        Action::Adopt(_) => 5,
        Action::Start(_) => 6,
        Action::Finish(_, true) => 7,
        Action::Claim(..) => 8,
        Action::Tick => 9,
        Action::Crash(_) | Action::Finish(_, false) => 10,
    };
    actions.into_iter().filter(|a| rank(a) < 10).min_by_key(rank).unwrap_or(Action::Tick)
}

/// Bounds from `GAFFER_LEASE_CHECK`: `big`, or the small default changed by
/// `key=value,…` (keys: machines, tasks, time, lease, attempts, joins, crashes, resend (0/1), heal_every,
/// max_states).
fn bounds_from_env() -> Bounds {
    let spec = std::env::var("GAFFER_LEASE_CHECK").unwrap_or_default();
    if spec == "big" {
        return Bounds::big();
    }
    let mut b = Bounds::small();
    for pair in spec.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let n: usize = value.parse().unwrap_or_else(|_| panic!("GAFFER_LEASE_CHECK: {pair:?} is not key=number"));
        match key {
            "machines" => b.machines = n,
            "tasks" => b.tasks = n,
            "time" => b.max_time = n as u16,
            "lease" => b.lease = n as u16,
            "attempts" => b.max_attempts = n as u32,
            "joins" => b.max_joins = n as u8,
            "crashes" => b.max_crashes = n as u8,
            "resend" => b.resend = n > 0,
            "heal_every" => b.heal_every = n.max(1),
            "max_states" => b.max_states = n,
            _ => panic!("GAFFER_LEASE_CHECK: unknown key {key:?}"),
        }
    }
    b
}

#[test]
fn lease_rules_hold_in_every_interleaving() {
    let bounds = bounds_from_env();
    let started = std::time::Instant::now();
    match explore(bounds, Flaw::None) {
        Ok(report) => {
            eprintln!(
                "{bounds:?}: {} states explored, {} healed to the end, in {:?}; {:?}",
                report.states,
                report.healed,
                started.elapsed(),
                report.seen
            );
            assert!(report.seen.all_seen(), "the world never reached a case the fences are for: {:?}", report.seen);
            assert!(report.states > 10_000, "the world is too small to mean anything: {report:?}");
            assert_eq!(report.healed, report.states.div_ceil(bounds.heal_every));
        }
        Err(violation) => panic!("{violation}"),
    }
}

#[test]
fn lease_checker_finds_each_broken_rule() {
    let flaws = [
        Flaw::OutcomeIgnoresLease,
        Flaw::OutcomeIgnoresAttempt,
        Flaw::RenewRevives,
        Flaw::CommitIgnoresEpoch,
        Flaw::AdoptFromLiveOwner,
        Flaw::InterruptedUncounted,
        Flaw::UnheardWrittenBack,
    ];
    for flaw in flaws {
        match explore(Bounds { resend: true, ..Bounds::small() }, flaw) {
            Ok(report) => panic!("{flaw:?} went unnoticed over {} states", report.states),
            Err(violation) => eprintln!("{flaw:?} found:\n{violation}"),
        }
    }
}

mod walks {
    use super::*;
    use proptest::prelude::*;

    const BIGGER: Bounds = Bounds {
        machines: 3,
        tasks: 3,
        max_time: 40,
        lease: 3,
        max_attempts: 3,
        max_joins: 4,
        max_crashes: 3,
        resend: true,
        heal_every: 1,
        max_states: 0,
    };

    fn walk(bounds: Bounds, choices: &[u16], seen: &mut Coverage) -> Result<(), String> {
        let rules = Rules { bounds, flaw: Flaw::None };
        let mut w = World::start(bounds);
        let mut trace = Vec::new();
        for choice in choices {
            let actions = rules.actions(&w);
            let Some(&action) = actions.get(usize::from(*choice) % actions.len().max(1)) else { break };
            trace.push(action.to_string());
            let next = rules.apply(&w, action).map_err(|e| format!("{e}\nafter: {trace:#?}"))?;
            seen.count(&w, action, &next);
            w = next;
        }
        heal(&rules, &w).map_err(|(e, moves)| format!("{e}\nafter: {trace:#?}\nhealing: {moves:?}"))
    }

    #[test]
    fn lease_random_walks_reach_the_cases_the_fences_are_for() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut seen = Coverage::default();
        for _ in 0..64 {
            let choices: Vec<u16> = (0..300).map(|_| rng.u16(..)).collect();
            if let Err(e) = walk(BIGGER, &choices, &mut seen) {
                panic!("{e}");
            }
        }
        assert!(seen.all_seen(), "{seen:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn lease_rules_hold_on_random_walks_of_bigger_clusters(choices in prop::collection::vec(any::<u16>(), 50..400)) {
            let result = walk(BIGGER, &choices, &mut Coverage::default());
            if let Err(e) = result {
                prop_assert!(false, "{}", e);
            }
        }
    }
}
