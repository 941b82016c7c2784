//! Retry delays, what happens after an attempt, effective priority with aging, and budgets.

use std::time::Duration;

use crate::config::RetryPolicy;
use crate::model::FailReason;

/// Delay before attempt `failed_attempt + 1` of a series, where `failed_attempt` counts from 1
/// within the series: `min(initial * backoff^(n-1), max) * (1 + u * jitter)` with `u` in `[0, 1)`.
/// Jitter only ever adds, so no retry starts before its configured delay.
pub fn retry_delay(policy: &RetryPolicy, failed_attempt: u32, u: f64) -> Duration {
    let exponent = failed_attempt.saturating_sub(1).min(1000) as i32;
    let base = policy.initial_interval.as_secs_f64() * policy.backoff.powi(exponent);
    let capped = base.min(policy.max_interval.as_secs_f64());
    let factor = 1.0 + u.clamp(0.0, 1.0) * policy.jitter.clamp(0.0, 1.0);
    Duration::try_from_secs_f64(capped * factor).unwrap_or(policy.max_interval)
}

/// How one attempt ended, as far as the retry policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// `None` = success.
    pub failure: Option<FailReason>,
    pub exit_code: Option<i32>,
}

/// Everything the decision needs about the task run after the attempt was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSoFar {
    /// Attempts used in the current series (a dead-letter retry starts a new series).
    pub attempts_in_series: u32,
    pub cost_usd_micros: u64,
    /// The task run's `budget_usd` and `retry.max_cost_usd` in force (a retry may have raised them).
    pub budget_usd_micros: Option<u64>,
    pub max_cost_usd_micros: Option<u64>,
    /// How many attempts in a row, this one included, gaffer itself dying interrupted (a crash,
    /// not a graceful stop: those leave the series).
    pub crashes_in_a_row: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterAttempt {
    Succeeded,
    Retry { delay: Duration },
    Dead { reason: FailReason },
    Cancelled,
}

/// The retry policy: success ends it; cancel never retries; crashes in a row quarantine it
/// (`poison`); budgets, non-retryable exit codes and the attempt cap dead-letter it; anything
/// else retries after `retry_delay`.
pub fn after_attempt(policy: &RetryPolicy, outcome: AttemptOutcome, run: RunSoFar, u: f64) -> AfterAttempt {
    let Some(reason) = outcome.failure else {
        // A cost learnt only at the exit (an agent's final JSON result) can reach the task run's
        // budget after the work is done: it fails as if the cost had come while it ran (SPEC §7).
        if budget_reached(run.cost_usd_micros, run.budget_usd_micros) {
            return AfterAttempt::Dead { reason: FailReason::Budget };
        }
        return AfterAttempt::Succeeded;
    };
    if reason == FailReason::Cancelled {
        return AfterAttempt::Cancelled;
    }
    // A task run that gaffer dying interrupted again and again may be what takes it down.
    let poison_after = policy.poison_after_crashes;
    if reason == FailReason::Interrupted && poison_after > 0 && run.crashes_in_a_row >= poison_after {
        return AfterAttempt::Dead { reason: FailReason::Poison };
    }
    if reason == FailReason::Budget || budget_reached(run.cost_usd_micros, run.budget_usd_micros) {
        return AfterAttempt::Dead { reason: FailReason::Budget };
    }
    if budget_reached(run.cost_usd_micros, run.max_cost_usd_micros) {
        return AfterAttempt::Dead { reason: FailReason::Budget };
    }
    let non_retryable = outcome.exit_code.is_some_and(|c| policy.non_retryable_exit_codes.contains(&c));
    let permanent = matches!(reason, FailReason::QueueTimeout | FailReason::TemplateError);
    if non_retryable || permanent || run.attempts_in_series >= policy.max_attempts {
        return AfterAttempt::Dead { reason };
    }
    AfterAttempt::Retry { delay: retry_delay(policy, run.attempts_in_series, u) }
}

/// Model fallback: attempt `n` of a series (from 1) gets the n-th of `models`, the last one
/// repeating; `None` without models. A person's retry starts a new series from the first.
pub fn model_for_attempt(models: &[String], attempt_in_series: u32) -> Option<&str> {
    let n = attempt_in_series.max(1) as usize;
    models.get(n - 1).or(models.last()).map(String::as_str)
}

/// Delay before a task run whose start found the machine out of a resource (descriptors,
/// processes, memory) tries again: 0.5 s, doubling with each consecutive time, at most 30 s,
/// plus up to half again of jitter so that the task runs that waited together do not all come
/// back at the same moment. Such a start is not counted as an attempt.
pub fn exhaustion_delay(consecutive: u32, u: f64) -> Duration {
    const FIRST_SECS: f64 = 0.5;
    const MAX_SECS: f64 = 30.0;
    let exponent = consecutive.saturating_sub(1).min(16) as i32;
    let base = (FIRST_SECS * 2f64.powi(exponent)).min(MAX_SECS);
    Duration::from_secs_f64(base * (1.0 + 0.5 * u.clamp(0.0, 1.0)))
}

/// A budget is reached once the recorded cost is at or past it (SPEC §7 "reaches").
pub fn budget_reached(spent_usd_micros: u64, budget_usd_micros: Option<u64>) -> bool {
    budget_usd_micros.is_some_and(|b| spent_usd_micros >= b)
}

/// Sort key for a ready task run: higher starts first, ties broken by enqueue order.
///
/// Effective priority is `priority + (now - enqueued) / aging`. Within one queue every entry ages
/// at the same rate, so comparing two entries at any `now` is the same as comparing
/// `priority * aging - enqueued`: the order never changes while they wait, and a heap keyed once
/// at enqueue stays correct. Without aging the key is the priority alone.
pub fn priority_key(priority: u8, enqueued_at_ms: u64, aging: Option<Duration>) -> i128 {
    match aging {
        Some(aging) if !aging.is_zero() => {
            i128::from(priority) * aging.as_millis() as i128 - i128::from(enqueued_at_ms)
        }
        _ => i128::from(priority),
    }
}

/// Effective priority at `now_ms` (for display): the priority plus one per full `aging` waited.
pub fn effective_priority(priority: u8, enqueued_at_ms: u64, aging: Option<Duration>, now_ms: u64) -> u64 {
    let bonus = match aging {
        Some(aging) if !aging.is_zero() => now_ms.saturating_sub(enqueued_at_ms) / aging.as_millis().max(1) as u64,
        _ => 0,
    };
    u64::from(priority) + bonus
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_interval: Duration::from_secs(2),
            backoff: 2.0,
            max_interval: Duration::from_secs(10),
            jitter: 0.2,
            non_retryable_exit_codes: vec![2],
            max_cost_usd_micros: Some(1_500_000),
            models: Vec::new(),
            poison_after_crashes: 2,
        }
    }

    fn failed(code: i32) -> AttemptOutcome {
        AttemptOutcome { failure: Some(FailReason::ExitCode), exit_code: Some(code) }
    }

    fn run(attempts: u32, cost: u64) -> RunSoFar {
        RunSoFar {
            attempts_in_series: attempts,
            cost_usd_micros: cost,
            budget_usd_micros: None,
            max_cost_usd_micros: policy().max_cost_usd_micros,
            crashes_in_a_row: 0,
        }
    }

    #[test]
    fn delay_follows_the_formula() {
        let p = policy();
        assert_eq!(retry_delay(&p, 1, 0.0), Duration::from_secs(2));
        assert_eq!(retry_delay(&p, 2, 0.0), Duration::from_secs(4));
        assert_eq!(retry_delay(&p, 3, 0.0), Duration::from_secs(8));
        assert_eq!(retry_delay(&p, 4, 0.0), Duration::from_secs(10));
        assert_eq!(retry_delay(&p, 1, 1.0), Duration::from_secs_f64(2.4));
        assert_eq!(retry_delay(&p, 60, 0.5), Duration::from_secs(11));
    }

    #[test]
    fn decisions() {
        let p = policy();
        let ok = AttemptOutcome { failure: None, exit_code: Some(0) };
        assert_eq!(after_attempt(&p, ok, run(1, 0), 0.0), AfterAttempt::Succeeded);
        assert_eq!(after_attempt(&p, failed(1), run(1, 0), 0.0), AfterAttempt::Retry { delay: Duration::from_secs(2) });
        assert_eq!(after_attempt(&p, failed(1), run(4, 0), 0.0), AfterAttempt::Dead { reason: FailReason::ExitCode });
        assert_eq!(after_attempt(&p, failed(2), run(1, 0), 0.0), AfterAttempt::Dead { reason: FailReason::ExitCode });
        assert_eq!(
            after_attempt(&p, failed(1), run(1, 1_500_000), 0.0),
            AfterAttempt::Dead { reason: FailReason::Budget }
        );
        let cancelled = AttemptOutcome { failure: Some(FailReason::Cancelled), exit_code: None };
        assert_eq!(after_attempt(&p, cancelled, run(1, 0), 0.0), AfterAttempt::Cancelled);
        let template = AttemptOutcome { failure: Some(FailReason::TemplateError), exit_code: None };
        assert_eq!(
            after_attempt(&p, template, run(1, 0), 0.0),
            AfterAttempt::Dead { reason: FailReason::TemplateError },
            "a template error would fail the same way again"
        );
        let over = RunSoFar { budget_usd_micros: Some(100), ..run(1, 100) };
        assert_eq!(after_attempt(&p, failed(1), over, 0.0), AfterAttempt::Dead { reason: FailReason::Budget });
        assert_eq!(
            after_attempt(&p, ok, over, 0.0),
            AfterAttempt::Dead { reason: FailReason::Budget },
            "a cost learnt at the exit that reaches the task run's budget fails it, as one learnt while it ran"
        );
        let under = RunSoFar { budget_usd_micros: Some(101), max_cost_usd_micros: Some(50), ..run(1, 100) };
        assert_eq!(after_attempt(&p, ok, under, 0.0), AfterAttempt::Succeeded, "max_cost_usd only stops retries");
    }

    #[test]
    fn a_second_crash_in_a_row_is_poison() {
        let p = policy();
        let interrupted = AttemptOutcome { failure: Some(FailReason::Interrupted), exit_code: None };
        let crashes = |n| RunSoFar { crashes_in_a_row: n, ..run(n, 0) };
        assert!(matches!(after_attempt(&p, interrupted, crashes(1), 0.0), AfterAttempt::Retry { .. }));
        assert_eq!(after_attempt(&p, interrupted, crashes(2), 0.0), AfterAttempt::Dead { reason: FailReason::Poison });
        let one_left = RetryPolicy { max_attempts: 2, ..p };
        assert_eq!(
            after_attempt(&one_left, interrupted, crashes(2), 0.0),
            AfterAttempt::Dead { reason: FailReason::Poison },
            "poison says why, even when the attempts were used up too"
        );
        let never = RetryPolicy { poison_after_crashes: 0, ..policy() };
        assert!(matches!(after_attempt(&never, interrupted, crashes(3), 0.0), AfterAttempt::Retry { .. }));
    }

    #[test]
    fn attempt_n_gets_the_nth_model_and_the_last_repeats() {
        let models = vec!["sonnet".to_string(), "haiku".to_string()];
        let picked: Vec<Option<&str>> = (1..=4).map(|n| model_for_attempt(&models, n)).collect();
        assert_eq!(picked, [Some("sonnet"), Some("haiku"), Some("haiku"), Some("haiku")]);
        assert_eq!(model_for_attempt(&[], 1), None);
    }

    #[test]
    fn exhaustion_backs_off_up_to_half_a_minute() {
        assert_eq!(exhaustion_delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(exhaustion_delay(2, 0.0), Duration::from_secs(1));
        assert_eq!(exhaustion_delay(4, 0.0), Duration::from_secs(4));
        assert_eq!(exhaustion_delay(7, 0.0), Duration::from_secs(30));
        assert_eq!(exhaustion_delay(u32::MAX, 1.0), Duration::from_secs(45));
        assert_eq!(exhaustion_delay(0, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn aging_lifts_an_old_low_priority_task() {
        let minute = Some(Duration::from_secs(60));
        let old_low = priority_key(10, 0, minute);
        let new_high = priority_key(50, 41 * 60_000, minute);
        assert!(old_low > new_high, "41 minutes of aging beat 40 points of priority");
        assert_eq!(effective_priority(10, 0, minute, 41 * 60_000), 51);
    }

    proptest! {
        /// Jitter only adds: the delay is never below the configured one, nor above it by more than the jitter.
        #[test]
        fn delay_bounds(n in 1u32..50, u in 0.0f64..1.0, jitter in 0.0f64..1.0, backoff in 1.0f64..4.0) {
            let p = RetryPolicy { jitter, backoff, ..policy() };
            let base = retry_delay(&RetryPolicy { jitter: 0.0, ..p.clone() }, n, 0.0);
            let d = retry_delay(&p, n, u);
            prop_assert!(d >= base);
            prop_assert!(d.as_secs_f64() <= base.as_secs_f64() * (1.0 + jitter) + 1e-9);
            prop_assert!(base <= p.max_interval);
        }

        /// The static key orders two entries exactly as their effective priorities would at any later time.
        #[test]
        fn key_matches_effective_priority(p1 in 0u8..=100, p2 in 0u8..=100, e1 in 0u64..10_000_000, e2 in 0u64..10_000_000, later in 0u64..10_000_000) {
            let aging = Duration::from_secs(60);
            let now = e1.max(e2) + later;
            let eff = |p: u8, e: u64| f64::from(p) + (now - e) as f64 / aging.as_millis() as f64;
            let k1 = priority_key(p1, e1, Some(aging));
            let k2 = priority_key(p2, e2, Some(aging));
            if k1 != k2 {
                prop_assert_eq!(k1 > k2, eff(p1, e1) > eff(p2, e2));
            }
        }
    }
}
