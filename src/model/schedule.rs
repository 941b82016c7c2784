//! Cron schedules: Vixie crontab lines (5 fields, or 6 with seconds first; `@daily` and the other
//! aliases; `L`, `W`, `#`) in a job's time zone, by croner.
//!
//! DST rules (croner's, after OCPS and Vixie cron), which users can check with
//! `gaffer schedules FILE`:
//! - spring forward (a local time that does not exist): a fixed-time job (`30 2 * * *`) runs at
//!   the first valid time after the gap, once; a wildcard/step job skips the missing times;
//! - fall back (a local time that happens twice): a fixed-time job runs once, at the first pass;
//!   a wildcard/step job runs at each pass.

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule in its zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Zone,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Zone {
    Named(chrono_tz::Tz),
    /// The machine's local zone (no `timezone` on the job).
    Local,
}

/// Parses a cron expression alone, with the reason croner gives when it is bad.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    parser.parse(expression).map_err(|e| e.to_string())
}

/// Parses an IANA zone name (`Europe/Berlin`).
pub fn parse_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown timezone `{name}`"))
}

impl Schedule {
    pub fn new(expression: &str, timezone: Option<&str>) -> Result<Schedule, String> {
        let cron = parse_cron(expression)?;
        let zone = match timezone {
            Some(name) => Zone::Named(parse_zone(name)?),
            None => Zone::Local,
        };
        Ok(Schedule { cron, zone })
    }

    /// The first fire time strictly after `after_ms` (ms since the epoch), if there is one.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = Utc.timestamp_millis_opt(i64::try_from(after_ms).ok()?).single()?;
        match self.zone {
            Zone::Named(tz) => self.next_in(after.with_timezone(&tz)),
            Zone::Local => self.next_in(after.with_timezone(&chrono::Local)),
        }
    }

    /// The next `count` fire times after `after_ms`.
    pub fn upcoming(&self, after_ms: u64, count: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(count);
        let mut from = after_ms;
        while out.len() < count {
            match self.next_after(from) {
                Some(next) => {
                    out.push(next);
                    from = next;
                }
                None => break,
            }
        }
        out
    }

    /// The zone's name, for display.
    pub fn zone_name(&self) -> String {
        match self.zone {
            Zone::Named(tz) => tz.name().to_string(),
            Zone::Local => "local".to_string(),
        }
    }

    /// `ms` as a local time in the schedule's zone (RFC 3339 with offset), for display.
    pub fn local_time(&self, ms: u64) -> String {
        let Some(t) = i64::try_from(ms).ok().and_then(|ms| Utc.timestamp_millis_opt(ms).single()) else {
            return String::new();
        };
        match self.zone {
            Zone::Named(tz) => t.with_timezone(&tz).to_rfc3339(),
            Zone::Local => t.with_timezone(&chrono::Local).to_rfc3339(),
        }
    }

    /// `ms` in the schedule's zone to the minute (`2026-11-19 02:00`; seconds when not zero).
    pub fn local_short(&self, ms: u64) -> String {
        let Some(t) = i64::try_from(ms).ok().and_then(|ms| Utc.timestamp_millis_opt(ms).single()) else {
            return String::new();
        };
        let format = if (ms / 1000).is_multiple_of(60) { "%Y-%m-%d %H:%M" } else { "%Y-%m-%d %H:%M:%S" };
        match self.zone {
            Zone::Named(tz) => t.with_timezone(&tz).format(format).to_string(),
            Zone::Local => t.with_timezone(&chrono::Local).format(format).to_string(),
        }
    }

    fn next_in<Tz: TimeZone>(&self, after: DateTime<Tz>) -> Option<u64> {
        let next = self.cron.find_next_occurrence(&after, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339).expect("time").timestamp_millis() as u64
    }

    fn utc(ms: u64) -> String {
        Utc.timestamp_millis_opt(ms as i64).single().expect("time").format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn next_n(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        Schedule::new(expr, Some(zone)).expect("schedule").upcoming(ms(from), n).into_iter().map(utc).collect()
    }

    #[test]
    fn weekdays_are_vixie_monday_to_friday() {
        // 2026-11-20 is a Friday.
        assert_eq!(
            next_n("0 9 * * MON-FRI", "UTC", "2026-11-20T10:00:00Z", 2),
            ["2026-11-23T09:00:00Z", "2026-11-24T09:00:00Z"]
        );
        assert_eq!(next_n("0 9 * * 1-5", "UTC", "2026-11-20T10:00:00Z", 1), ["2026-11-23T09:00:00Z"]);
    }

    #[test]
    fn six_fields_means_seconds_and_aliases_work() {
        assert_eq!(
            next_n("*/20 * * * * *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T00:00:20Z", "2026-01-01T00:00:40Z"]
        );
        assert_eq!(next_n("@daily", "UTC", "2026-01-01T00:00:00Z", 1), ["2026-01-02T00:00:00Z"]);
    }

    #[test]
    fn spring_forward_fixed_time_runs_once_after_the_gap() {
        // Berlin: 2026-03-29 02:00 CET → 03:00 CEST; 02:30 does not exist.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        );
        // New York: 2026-03-08 02:00 EST → 03:00 EDT.
        assert_eq!(next_n("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 1), ["2026-03-08T07:00:00Z"]);
    }

    #[test]
    fn spring_forward_wildcard_skips_the_missing_hour() {
        // Every 30 minutes through the Berlin gap: 01:30 CET then 03:00 CEST, nothing at 02:xx.
        assert_eq!(
            next_n("*/30 * * * *", "Europe/Berlin", "2026-03-29T00:15:00Z", 3),
            ["2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"],
        );
    }

    #[test]
    fn fall_back_fixed_time_runs_once() {
        // Berlin: 2026-10-25 03:00 CEST → 02:00 CET; 02:30 happens twice, runs at the first.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
        );
        // New York: 2026-11-01 02:00 EDT → 01:00 EST; 01:30 happens twice.
        assert_eq!(
            next_n("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
        );
    }

    #[test]
    fn fall_back_wildcard_runs_in_both_passes() {
        // Hourly at :15 in New York across the repeated 01:xx hour: 01:15 EDT and 01:15 EST.
        assert_eq!(
            next_n("15 * * * *", "America/New_York", "2026-11-01T04:00:00Z", 3),
            ["2026-11-01T04:15:00Z", "2026-11-01T05:15:00Z", "2026-11-01T06:15:00Z"],
        );
    }

    #[test]
    fn bad_input_is_explained() {
        assert!(Schedule::new("61 * * * *", None).is_err());
        assert!(Schedule::new("* * * * *", Some("Mars/Olympus")).expect_err("bad zone").contains("unknown timezone"));
    }
}

/// What the store remembers of a schedule between starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleState {
    pub expression: String,
    pub timezone: Option<String>,
    /// The next fire time not yet handled.
    pub next_due_ms: u64,
    pub last_fired_ms: Option<u64>,
}

/// At start: which missed fire times to run now, and the next fire time after `now_ms`.
/// A schedule whose expression or zone changed starts afresh (nothing is caught up).
pub fn catch_up(
    schedule: &Schedule,
    stored: Option<&ScheduleState>,
    expression: &str,
    timezone: Option<&str>,
    policy: &crate::config::SchedulePolicy,
    now_ms: u64,
) -> (Vec<u64>, u64) {
    let next = schedule.next_after(now_ms).unwrap_or(u64::MAX);
    let Some(state) = stored.filter(|s| s.expression == expression && s.timezone.as_deref() == timezone) else {
        return (Vec::new(), next);
    };
    let window_ms = policy.catchup_window.as_millis() as u64;
    let mut missed = Vec::new();
    let mut slot = Some(state.next_due_ms);
    while let Some(t) = slot.filter(|t| *t <= now_ms) {
        if now_ms - t <= window_ms {
            missed.push(t);
        }
        slot = schedule.next_after(t);
        if missed.len() > MAX_CATCHUP_RUNS {
            missed.remove(0);
        }
    }
    let fire = match policy.catchup {
        crate::config::Catchup::None => Vec::new(),
        crate::config::Catchup::Latest => missed.last().copied().into_iter().collect(),
        crate::config::Catchup::All => missed,
    };
    (fire, next)
}

/// `catchup = "all"` never starts more than this many runs at once.
pub const MAX_CATCHUP_RUNS: usize = 100;

/// What to do when a fire time comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireDecision {
    Start,
    Skip,
    /// Hold it until the active run ends.
    Queue,
    /// Cancel the active runs, then start.
    CancelPreviousThenStart,
}

/// The overlap policy, given how many runs of the job are active and whether a fire time
/// already waits for them.
pub fn on_fire(policy: &crate::config::SchedulePolicy, active: usize, one_waiting: bool) -> FireDecision {
    use crate::config::Overlap;
    let at_cap = policy.max_active_runs.is_some_and(|max| active >= max);
    match policy.overlap {
        _ if active == 0 && !at_cap => FireDecision::Start,
        Overlap::Skip => FireDecision::Skip,
        Overlap::Queue if one_waiting => FireDecision::Skip,
        Overlap::Queue => FireDecision::Queue,
        Overlap::CancelPrevious => FireDecision::CancelPreviousThenStart,
        Overlap::Allow if at_cap => FireDecision::Skip,
        Overlap::Allow => FireDecision::Start,
    }
}

/// [`on_fire`] on a node of a cluster, which counts only its own runs (`active`): under
/// `overlap = "cancel_previous"` it always cancels and starts, whatever it counted, since runs
/// of other nodes may be active (it cancels every node's once its run is created, i.e. once it
/// took the fire time); any other policy decides as [`on_fire`], its `Start` bounded
/// cluster-wide by [`start_limit`].
pub fn on_fire_in_cluster(policy: &crate::config::SchedulePolicy, active: usize, one_waiting: bool) -> FireDecision {
    match policy.overlap {
        crate::config::Overlap::CancelPrevious => FireDecision::CancelPreviousThenStart,
        _ => on_fire(policy, active, one_waiting),
    }
}

/// How many runs of the job may be active, cluster-wide, for a `Start` that [`on_fire`] decided
/// to stand (`None`: any number): the count at which `on_fire` would no longer start. A node
/// decides from the runs it sees; a store shared by several nodes checks this bound against
/// every node's running job runs in the transaction that creates the run
/// (`Mutation::ActiveRunsBelow`), so two nodes never both start one past it. A
/// `CancelPreviousThenStart` is not bounded (its node cancels the runs it sees first).
pub fn start_limit(policy: &crate::config::SchedulePolicy) -> Option<usize> {
    use crate::config::Overlap;
    match policy.overlap {
        Overlap::Allow => policy.max_active_runs,
        Overlap::Skip | Overlap::Queue | Overlap::CancelPrevious => {
            Some(policy.max_active_runs.map_or(1, |m| m.min(1)))
        }
    }
}

/// Whether handling fire time `fired` may be recorded over a stored state that last handled
/// `stored_last_fired` — the rule that makes a schedule fire once however many nodes share the
/// store: a fire time is taken by the first node to record it, and never after a later one was
/// (catch-up fires in increasing order, so each is still taken once). A state that handled no
/// fire time replaces anything. `store::pg` checks it in the transaction that creates the run:
/// `ON CONFLICT (job) DO UPDATE … WHERE schedules.last_fired_ms IS NULL OR
/// schedules.last_fired_ms < excluded.last_fired_ms`; no row written → the whole fire is refused.
pub fn fire_accepted(stored_last_fired: Option<u64>, fired: Option<u64>) -> bool {
    match (stored_last_fired, fired) {
        (_, None) | (None, Some(_)) => true,
        (Some(stored), Some(fired)) => stored < fired,
    }
}

#[cfg(test)]
mod policy_tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Catchup, Overlap, SchedulePolicy};

    const MIN: u64 = 60_000;

    fn every_minute() -> Schedule {
        Schedule::new("* * * * *", Some("UTC")).expect("schedule")
    }

    fn stored(next_due_ms: u64) -> ScheduleState {
        ScheduleState { expression: "* * * * *".into(), timezone: Some("UTC".into()), next_due_ms, last_fired_ms: None }
    }

    fn policy(catchup: Catchup, window_min: u64) -> SchedulePolicy {
        SchedulePolicy { catchup, catchup_window: Duration::from_millis(window_min * MIN), ..SchedulePolicy::default() }
    }

    #[test]
    fn catch_up_policies() {
        let s = every_minute();
        let now = 100 * MIN + 30_000;
        let state = stored(95 * MIN);
        let run = |p: SchedulePolicy| catch_up(&s, Some(&state), "* * * * *", Some("UTC"), &p, now);
        assert_eq!(run(policy(Catchup::None, 60)), (vec![], 101 * MIN));
        assert_eq!(run(policy(Catchup::Latest, 60)), (vec![100 * MIN], 101 * MIN));
        assert_eq!(run(policy(Catchup::All, 60)).0, (95..=100).map(|m| m * MIN).collect::<Vec<_>>());
        assert_eq!(run(policy(Catchup::All, 2)).0, vec![99 * MIN, 100 * MIN], "only slots inside the window");
    }

    #[test]
    fn a_restart_before_the_due_time_neither_loses_nor_doubles() {
        let s = every_minute();
        let state = stored(101 * MIN);
        let (fire, next) =
            catch_up(&s, Some(&state), "* * * * *", Some("UTC"), &SchedulePolicy::default(), 100 * MIN + 59_000);
        assert!(fire.is_empty());
        assert_eq!(next, 101 * MIN);
    }

    #[test]
    fn a_changed_expression_starts_afresh() {
        let s = every_minute();
        let state = ScheduleState { expression: "0 * * * *".into(), ..stored(0) };
        let (fire, _) = catch_up(&s, Some(&state), "* * * * *", Some("UTC"), &SchedulePolicy::default(), 100 * MIN);
        assert!(fire.is_empty());
    }

    /// `start_limit` is exactly where `on_fire` stops starting, for every policy.
    #[test]
    fn the_start_limit_is_where_on_fire_stops_starting() {
        for overlap in [Overlap::Skip, Overlap::Queue, Overlap::CancelPrevious, Overlap::Allow] {
            for max in [None, Some(1), Some(2), Some(5)] {
                let policy = SchedulePolicy { overlap, max_active_runs: max, ..SchedulePolicy::default() };
                for active in 0..8 {
                    let starts = on_fire(&policy, active, false) == FireDecision::Start;
                    let below = start_limit(&policy).is_none_or(|limit| active < limit);
                    assert_eq!(starts, below, "{overlap:?} max {max:?} with {active} active");
                }
            }
        }
    }

    #[test]
    fn overlap_policies() {
        let with = |overlap, max| SchedulePolicy { overlap, max_active_runs: max, ..SchedulePolicy::default() };
        assert_eq!(on_fire(&with(Overlap::Skip, None), 0, false), FireDecision::Start);
        assert_eq!(on_fire(&with(Overlap::Skip, None), 1, false), FireDecision::Skip);
        assert_eq!(on_fire(&with(Overlap::Queue, None), 1, false), FireDecision::Queue);
        assert_eq!(on_fire(&with(Overlap::Queue, None), 1, true), FireDecision::Skip);
        assert_eq!(on_fire(&with(Overlap::CancelPrevious, None), 2, false), FireDecision::CancelPreviousThenStart);
        assert_eq!(on_fire(&with(Overlap::Allow, None), 5, false), FireDecision::Start);
        assert_eq!(on_fire(&with(Overlap::Allow, Some(2)), 2, false), FireDecision::Skip);
    }

    #[test]
    fn in_a_cluster_cancel_previous_cancels_and_starts_whatever_the_node_counted() {
        for overlap in [Overlap::Skip, Overlap::Queue, Overlap::CancelPrevious, Overlap::Allow] {
            for max in [None, Some(1), Some(2)] {
                let policy = SchedulePolicy { overlap, max_active_runs: max, ..SchedulePolicy::default() };
                for (active, waiting) in [(0, false), (1, false), (1, true), (3, false)] {
                    let here = on_fire(&policy, active, waiting);
                    let want =
                        if overlap == Overlap::CancelPrevious { FireDecision::CancelPreviousThenStart } else { here };
                    assert_eq!(on_fire_in_cluster(&policy, active, waiting), want, "{overlap:?} {max:?} {active}");
                }
            }
        }
    }

    #[test]
    fn a_fire_time_is_taken_once_and_never_after_a_later_one() {
        let table = [
            (None, Some(60_000), true),
            (Some(0), Some(60_000), true),
            (Some(60_000), Some(60_000), false),
            (Some(120_000), Some(60_000), false),
            (Some(60_000), None, true),
            (None, None, true),
        ];
        for (stored, fired, accepted) in table {
            assert_eq!(fire_accepted(stored, fired), accepted, "{stored:?} then {fired:?}");
        }
    }
}
