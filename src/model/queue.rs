//! A queue's limits over time: its rate limit and its circuit breaker. Both are functions of
//! durable facts — attempt start times, failed attempts' end times — so a restart, a `gaffer
//! run` from system cron, or a `serve` restart derives the same answer from the store that the
//! process before it held in memory.

use std::time::Duration;

use crate::config::{CircuitRule, RateLimit};
use crate::model::FailReason;

/// When the rate limit lets the next attempt start: `None` = now. `starts_ms`: attempt start
/// times in this queue, oldest first (older ones than the window are ignored).
pub fn rate_limit_opens_at(starts_ms: &[u64], limit: RateLimit, now_ms: u64) -> Option<u64> {
    let window_ms = millis(limit.window);
    let in_window: Vec<u64> = starts_ms.iter().copied().filter(|&t| now_ms.saturating_sub(t) < window_ms).collect();
    let count = limit.count as usize;
    // The next start is allowed once the count-th most recent start has left the window.
    (in_window.len() >= count).then(|| in_window[in_window.len() - count] + window_ms)
}

/// How many attempts the rate limit lets start now, all at once: the count less the starts
/// still in the window (`starts_ms` as for [`rate_limit_opens_at`]). A cluster's claim takes at
/// most this many, counted over every node's starts.
pub fn rate_limit_room(starts_ms: &[u64], limit: RateLimit, now_ms: u64) -> usize {
    let window_ms = millis(limit.window);
    let in_window = starts_ms.iter().filter(|&&t| now_ms.saturating_sub(t) < window_ms).count();
    (limit.count as usize).saturating_sub(in_window)
}

/// What a queue's limits let a claim take now, from the facts of every node (a cluster's
/// claim decides it under the queue's lock, so nodes claiming at once cannot together pass it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Attempts that may start now (`usize::MAX`: no rate limit says otherwise).
    pub may_start: usize,
    /// Nothing may start now: look again then (the circuit closes, or the oldest start in the
    /// window leaves it).
    pub look_again_at: Option<u64>,
    /// The circuit is open until then.
    pub circuit_until: Option<u64>,
}

/// [`Room`] of a queue with these rules: an open circuit lets nothing start until it closes;
/// else the rate limit lets [`rate_limit_room`] start, and when that is none, the next one at
/// [`rate_limit_opens_at`]. `starts_ms`/`failures_ms` oldest first.
pub fn room(
    rate_limit: Option<RateLimit>,
    circuit: Option<CircuitRule>,
    starts_ms: &[u64],
    failures_ms: &[u64],
    now_ms: u64,
) -> Room {
    let circuit_until = circuit.and_then(|rule| circuit_open_until(rule, failures_ms, now_ms));
    if let Some(until) = circuit_until {
        return Room { may_start: 0, look_again_at: Some(until), circuit_until };
    }
    let Some(limit) = rate_limit else { return Room { may_start: usize::MAX, look_again_at: None, circuit_until } };
    let may_start = rate_limit_room(starts_ms, limit, now_ms);
    let look_again_at = (may_start == 0).then(|| rate_limit_opens_at(starts_ms, limit, now_ms)).flatten();
    Room { may_start, look_again_at, circuit_until }
}

/// Whether a failure opened the circuit: closed before it, open with it (a half-open
/// circuit's failed trial opens it again). The node that records such a failure says so
/// (`queue.circuit_opened`), once for the cluster.
pub fn failure_opens_circuit(rule: CircuitRule, earlier_ms: &[u64], failed_at_ms: u64) -> Option<u64> {
    if circuit_open_until(rule, earlier_ms, failed_at_ms).is_some() {
        return None;
    }
    let mut with = earlier_ms.to_vec();
    let at = with.partition_point(|&t| t <= failed_at_ms);
    with.insert(at, failed_at_ms);
    circuit_open_until(rule, &with, failed_at_ms)
}

/// How far back the facts of a queue's limits reach: older starts and failures change nothing.
pub fn lookback(rate_limit: Option<RateLimit>, circuit: Option<CircuitRule>) -> Duration {
    let rate = rate_limit.map_or(Duration::ZERO, |r| r.window);
    let circuit = circuit.map_or(Duration::ZERO, |c| c.within + c.open_for);
    rate.max(circuit)
}

/// Which failed attempts count against a queue's circuit: the task's own failures, not gaffer
/// stopping it (interrupted, cancelled, a budget) nor a run that never started.
pub fn trips_circuit(reason: FailReason) -> bool {
    !matches!(
        reason,
        FailReason::Interrupted
            | FailReason::Cancelled
            | FailReason::Budget
            | FailReason::QueueTimeout
            | FailReason::WaitTimeout
            | FailReason::Poison
    )
}

/// Until when the circuit is open at `now_ms` (`None`: closed, attempts start). `failures_ms`:
/// end times of the queue's failed attempts, oldest first.
///
/// It opens at every failure that makes `failures` of them within `within`, for `open_for`
/// after that failure; then it closes by itself. A failure right after it closes that makes
/// the burst again (old failures still within `within`) opens it again at once: a half-open
/// circuit whose trial failed. Only the last `within + open_for` matters, so this is exact from
/// a bounded history.
pub fn circuit_open_until(rule: CircuitRule, failures_ms: &[u64], now_ms: u64) -> Option<u64> {
    let (within_ms, open_for_ms) = (millis(rule.within), millis(rule.open_for));
    let needed = rule.failures.max(1) as usize;
    let mut first = 0;
    let mut until = None;
    for (i, &t) in failures_ms.iter().enumerate() {
        while t.saturating_sub(failures_ms[first]) >= within_ms {
            first += 1;
        }
        if i + 1 - first >= needed {
            until = Some(t.saturating_add(open_for_ms));
        }
    }
    until.filter(|&u| u > now_ms)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1000;

    fn rule(failures: u32, within_s: u64, open_for_s: u64) -> CircuitRule {
        CircuitRule { failures, within: Duration::from_secs(within_s), open_for: Duration::from_secs(open_for_s) }
    }

    #[test]
    fn two_per_thirty_seconds() {
        let limit = RateLimit { count: 2, window: Duration::from_secs(30) };
        assert_eq!(rate_limit_opens_at(&[], limit, 0), None);
        assert_eq!(rate_limit_opens_at(&[10 * S], limit, 11 * S), None);
        assert_eq!(rate_limit_opens_at(&[10 * S, 12 * S], limit, 13 * S), Some(40 * S));
        assert_eq!(rate_limit_opens_at(&[10 * S, 12 * S], limit, 40 * S), None, "the oldest left the window");
        // More starts in the window than the limit (it was lowered): wait for enough to leave.
        assert_eq!(rate_limit_opens_at(&[S, 2 * S, 3 * S], limit, 4 * S), Some(32 * S));
    }

    #[test]
    fn a_burst_opens_the_circuit_and_time_closes_it() {
        let r = rule(3, 60, 300);
        assert_eq!(circuit_open_until(r, &[0, 10 * S], 11 * S), None, "two are not a burst");
        assert_eq!(circuit_open_until(r, &[0, 10 * S, 20 * S], 21 * S), Some(320 * S));
        assert_eq!(circuit_open_until(r, &[0, 10 * S, 20 * S], 320 * S), None, "closed by itself");
        assert_eq!(circuit_open_until(r, &[0, 30 * S, 61 * S], 62 * S), None, "spread wider than `within`");
    }

    #[test]
    fn a_failed_trial_right_after_closing_opens_it_again() {
        let r = rule(2, 60, 10);
        assert_eq!(circuit_open_until(r, &[0, 5 * S], 6 * S), Some(15 * S));
        assert_eq!(circuit_open_until(r, &[0, 5 * S, 16 * S], 17 * S), Some(26 * S));
    }

    #[test]
    fn what_trips_it() {
        assert!(trips_circuit(FailReason::ExitCode) && trips_circuit(FailReason::Timeout));
        assert!(!trips_circuit(FailReason::Interrupted) && !trips_circuit(FailReason::Budget));
    }

    #[test]
    fn room_of_a_queue_by_its_rules() {
        let limit = RateLimit { count: 3, window: Duration::from_secs(10) };
        let circuit = rule(2, 60, 30);
        // (rate limit, circuit, starts, failures, now) → (may start, look again at, circuit until)
        type Row = (
            Option<RateLimit>,
            Option<CircuitRule>,
            &'static [u64],
            &'static [u64],
            u64,
            (usize, Option<u64>, Option<u64>),
        );
        let table: [Row; 8] = [
            (None, None, &[], &[], 0, (usize::MAX, None, None)),
            (Some(limit), None, &[], &[], 0, (3, None, None)),
            (Some(limit), None, &[S, 2 * S], &[], 3 * S, (1, None, None)),
            (Some(limit), None, &[S, 2 * S, 3 * S], &[], 4 * S, (0, Some(11 * S), None)),
            (Some(limit), None, &[S, 2 * S, 3 * S], &[], 11 * S, (1, None, None)),
            (Some(limit), Some(circuit), &[], &[S], 2 * S, (3, None, None)),
            (Some(limit), Some(circuit), &[], &[S, 2 * S], 3 * S, (0, Some(32 * S), Some(32 * S))),
            (None, Some(circuit), &[], &[S, 2 * S], 32 * S, (usize::MAX, None, None)),
        ];
        for (rate, circuit, starts, failures, now, (may_start, look_again_at, circuit_until)) in table {
            let got = room(rate, circuit, starts, failures, now);
            assert_eq!(got, Room { may_start, look_again_at, circuit_until }, "{starts:?} {failures:?} at {now}");
        }
    }

    #[test]
    fn which_failure_opens_the_circuit() {
        let r = rule(2, 60, 10);
        // (earlier failures, this one) → opened until
        let table: [(&[u64], u64, Option<u64>); 5] = [
            (&[], S, None),
            (&[0], 5 * S, Some(15 * S)),
            (&[0, 5 * S], 6 * S, None),
            (&[0, 5 * S], 16 * S, Some(26 * S)),
            (&[0], 61 * S, None),
        ];
        for (earlier, at, opened) in table {
            assert_eq!(failure_opens_circuit(r, earlier, at), opened, "{earlier:?} then {at}");
        }
    }

    proptest! {
        /// Only the last `within + open_for` matters: dropping older failures changes nothing,
        /// which is what lets a restart derive the state from a bounded history.
        #[test]
        fn a_bounded_history_gives_the_same_answer(
            mut times in proptest::collection::vec(0u64..600_000, 0..40),
            failures in 1u32..5, within_s in 1u64..120, open_for_s in 1u64..120, now in 0u64..700_000,
        ) {
            times.sort_unstable();
            times.retain(|&t| t <= now);
            let r = rule(failures, within_s, open_for_s);
            let since = now.saturating_sub((within_s + open_for_s) * S);
            let recent: Vec<u64> = times.iter().copied().filter(|&t| t >= since).collect();
            prop_assert_eq!(circuit_open_until(r, &times, now), circuit_open_until(r, &recent, now));
        }

        /// Claims that each take at most the room, in batches at random times, never put more
        /// than `count` starts in any window (what a cluster's claims do under the queue's lock).
        #[test]
        fn batches_within_the_room_hold_the_rate_limit(
            count in 1u32..6, window_s in 1u64..30,
            asks in proptest::collection::vec((0u64..100_000, 1usize..8), 1..60),
        ) {
            let limit = RateLimit { count, window: Duration::from_secs(window_s) };
            let mut asks = asks;
            asks.sort_unstable();
            let mut starts: Vec<u64> = Vec::new();
            for (at, want) in asks {
                let took = want.min(room(Some(limit), None, &starts, &[], at).may_start);
                starts.extend(std::iter::repeat_n(at, took));
            }
            for &t in &starts {
                let within = starts.iter().filter(|&&s| s >= t && s - t < window_s * S).count();
                prop_assert!(within <= count as usize, "{} starts within {}s of {}", within, window_s, t);
            }
        }

        /// Never more than `count` starts in any window when each start waits for the limit.
        #[test]
        fn the_rate_limit_holds_in_every_window(count in 1u32..5, window_s in 1u64..60, asks in proptest::collection::vec(0u64..200_000, 1..60)) {
            let limit = RateLimit { count, window: Duration::from_secs(window_s) };
            let mut asks = asks;
            asks.sort_unstable();
            let mut starts: Vec<u64> = Vec::new();
            for ask in asks {
                let at = rate_limit_opens_at(&starts, limit, ask).unwrap_or(ask).max(ask);
                prop_assert_eq!(rate_limit_opens_at(&starts, limit, at), None);
                starts.push(at);
                starts.sort_unstable();
            }
            for &t in &starts {
                let within = starts.iter().filter(|&&s| s >= t && s - t < window_s * S).count();
                prop_assert!(within <= count as usize, "{} starts within {}s of {}", within, window_s, t);
            }
        }
    }
}
