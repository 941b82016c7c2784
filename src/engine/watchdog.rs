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
    missed: Arc<Mutex<HashMap<usize, u32>>>,
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
            for (id, _, worker) in watched {
                self.ping(id, worker);
            }
        }
    }

    fn ping(&self, id: usize, worker: Addr<Worker>) {
        let missed = self.missed.clone();
        actix::spawn(async move {
            let answered = worker.send(Ping).timeout(PING_TIMEOUT).await.is_ok();
            let Ok(mut missed) = missed.lock() else { return };
            let count = missed.entry(id).or_insert(0);
            *count = if answered { 0 } else { *count + 1 };
            if *count >= MAX_MISSED_PINGS {
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

    #[test]
    fn timeout_wins_over_silence() {
        assert_eq!(overdue_reason(10_000, 0, 0, 5_000, 1_000), Some(FailReason::Timeout));
        assert_eq!(overdue_reason(2_000, 0, 500, 5_000, 1_000), Some(FailReason::HeartbeatTimeout));
        assert_eq!(overdue_reason(2_000, 0, 1_500, 5_000, 1_000), None);
    }
}
