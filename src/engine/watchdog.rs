//! The Watchdog actor, on its own arbiter (thread) so that it still acts when the main one is
//! wedged: kills attempts silent past `heartbeat_timeout` or running past `timeout`, and pings
//! the workers; a worker that stops answering gets the process restarted (crash-only: the next
//! start recovers everything from the store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use super::SharedClock;
use super::worker::{Activity, Ping, Worker};
use crate::model::FailReason;

const TICK: Duration = Duration::from_millis(200);
const PING_EVERY_TICKS: u32 = 10;
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive missed pings before the process gives up on itself.
const MAX_MISSED_PINGS: u32 = 3;

/// What the watchdog watches: each worker's current attempt and its address.
#[derive(Default)]
pub struct Watched {
    pub workers: HashMap<usize, (Arc<Activity>, Addr<Worker>)>,
    /// Restarts per worker since start, for the views.
    pub restarts: HashMap<usize, u32>,
}

pub type WatchList = Arc<Mutex<Watched>>;

pub struct Watchdog {
    clock: SharedClock,
    list: WatchList,
    ticks: u32,
    missed: Arc<Mutex<HashMap<usize, Pings>>>,
}

/// One worker's pings: one in flight at most, and the misses in a row.
#[derive(Debug, Default, PartialEq)]
struct Pings {
    pending: bool,
    missed: u32,
}

impl Pings {
    /// Whether to send a ping now. Not while one is in flight, nor while the worker waits for a
    /// commit (a database restart can take a minute; that is not being wedged).
    fn send(&mut self, awaits_store: bool) -> bool {
        if awaits_store {
            self.missed = 0;
            return false;
        }
        !std::mem::replace(&mut self.pending, true)
    }

    /// The ping in flight came back (`answered`) or timed out: true to give up on the worker.
    fn answered(&mut self, answered: bool) -> bool {
        self.pending = false;
        self.missed = if answered { 0 } else { self.missed + 1 };
        self.missed >= MAX_MISSED_PINGS
    }
}

impl Watchdog {
    pub fn new(clock: SharedClock, list: WatchList) -> Watchdog {
        Watchdog { clock, list, ticks: 0, missed: Arc::default() }
    }

    fn tick(&mut self) {
        let now = self.clock.now_ms();
        let watched: Vec<(usize, Arc<Activity>, Addr<Worker>)> = match self.list.lock() {
            Ok(list) => list.workers.iter().map(|(id, (a, w))| (*id, a.clone(), w.clone())).collect(),
            Err(_) => return,
        };
        for (_, activity, _) in &watched {
            if let Some(reason) = activity.overdue(now) {
                activity.kill(reason);
            }
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(PING_EVERY_TICKS) {
            for (id, activity, worker) in watched {
                self.ping(id, &activity, worker);
            }
        }
    }

    /// One ping at a time per worker: pings sent every 2 s that each wait 10 s overlapped, so
    /// three "consecutive" misses came 14 s after a worker stopped answering, not 30 s.
    fn ping(&self, id: usize, activity: &Activity, worker: Addr<Worker>) {
        let Ok(mut pings) = self.missed.lock() else { return };
        if !pings.entry(id).or_default().send(activity.awaits_store()) {
            return;
        }
        drop(pings);
        let missed = self.missed.clone();
        actix::spawn(async move {
            let answered = worker.send(Ping).timeout(PING_TIMEOUT).await.is_ok();
            let Ok(mut missed) = missed.lock() else { return };
            if missed.entry(id).or_default().answered(answered) {
                eprintln!(
                    "gaffer: worker {id} has not answered the watchdog for {} s; stopping so a restart can recover from the store",
                    PING_TIMEOUT.as_secs() * u64::from(MAX_MISSED_PINGS)
                );
                std::process::exit(70);
            }
        });
    }
}

impl Actor for Watchdog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |act, _| act.tick());
    }
}

/// Why a kill is overdue, if it is.
pub fn overdue_reason(
    now_ms: u64,
    started_ms: u64,
    last_activity_ms: u64,
    timeout_ms: u64,
    heartbeat_timeout_ms: u64,
) -> Option<FailReason> {
    if now_ms.saturating_sub(started_ms) >= timeout_ms {
        Some(FailReason::Timeout)
    } else if now_ms.saturating_sub(last_activity_ms) >= heartbeat_timeout_ms {
        Some(FailReason::HeartbeatTimeout)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pings every 2 s that each waited 10 s overlapped: three misses "in a row" came 14 s
    /// after a worker stopped answering. One in flight at a time makes them 30 s; a worker
    /// waiting for a commit is not pinged at all.
    #[test]
    fn a_worker_is_given_up_after_three_pings_in_a_row_one_at_a_time() {
        let mut p = Pings::default();
        assert!(p.send(false), "the first ping goes");
        assert!(!p.send(false) && !p.send(false), "none while it is in flight");
        assert!(!p.answered(false), "one miss");
        assert!(p.send(false));
        assert!(!p.answered(false), "two");
        assert!(p.send(false));
        assert!(p.answered(false), "three in a row: give up");
        let mut q = Pings { pending: false, missed: 2 };
        assert!(!q.send(true), "waiting for the store: no ping");
        assert_eq!(q, Pings { pending: false, missed: 0 }, "and what was missed before is forgiven");
        assert!(q.send(false));
        assert!(!q.answered(true));
        assert_eq!(q, Pings::default(), "an answer clears the misses");
    }

    #[test]
    fn timeout_wins_over_silence() {
        assert_eq!(overdue_reason(10_000, 0, 0, 5_000, 1_000), Some(FailReason::Timeout));
        assert_eq!(overdue_reason(2_000, 0, 500, 5_000, 1_000), Some(FailReason::HeartbeatTimeout));
        assert_eq!(overdue_reason(2_000, 0, 1_500, 5_000, 1_000), None);
    }
}
