//! Headless output: one human line per state change, or the JSON event stream (SPEC §6).

use std::io::Write;

use crate::engine::{AttemptFailure, EngineEvent, EventData, JobStart};
use crate::model::FailReason;
use crate::model::money::format_usd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Writes one event in the chosen format. Events that say nothing to a person (cost ticks,
/// progress) are left out of the human form; they are in the journal and in `--json`.
pub fn print(out: &mut impl Write, format: Format, event: &EngineEvent) -> std::io::Result<()> {
    match format {
        Format::Json => writeln!(out, "{}", event.to_json_text()),
        Format::Human => match human_line(event) {
            Some(line) => writeln!(out, "{line}"),
            None => Ok(()),
        },
    }
}

/// `13:00:01.123 #3 report.fetch  started (attempt 1, pid 4242)`.
pub fn human_line(e: &EngineEvent) -> Option<String> {
    let what = describe(e)?;
    let time = crate::engine::rfc3339_ms(e.ts_ms);
    let clock = time.get(11..23).unwrap_or(&time);
    // A task event's task is labelled by the run it is (SPEC §6): `review#2`, `fetch[3]`.
    let who = match (&e.task_run, e.task_label(), &e.job_run, &e.job) {
        (Some(id), Some(task), _, Some(job)) => format!("#{id} {job}.{task}"),
        (_, _, Some(id), Some(job)) => format!("j{id} {job}"),
        _ => String::from("gaffer"),
    };
    Some(format!("{clock} {who:<28} {what}"))
}

fn describe(e: &EngineEvent) -> Option<String> {
    let cost = |micros: u64| if micros > 0 { format!(", {}", dollars(micros)) } else { String::new() };
    Some(match &e.data {
        EventData::JobStarted(JobStart::Retry { from: Some(from) }) => {
            format!("job run reopened from task `{from}` (retry --from)")
        }
        EventData::JobStarted(JobStart::Retry { from: None }) => "job run reopened by a retry".into(),
        EventData::JobStarted(JobStart::New { .. }) => "job started".into(),
        EventData::JobRedefined { changes, .. } => {
            format!("job run switched to the current definition ({})", changes.join("; "))
        }
        EventData::HookFailed(h) => {
            format!("hook {} ({}) for {} failed: {}: {}", h.hook, h.level, h.for_event, h.reason, h.detail)
        }
        EventData::JobSucceeded(end) => format!("job succeeded{}", cost(end.cost_usd_micros)),
        EventData::JobFailed(end) => {
            format!("job failed: {}{}", end.reason.as_deref().unwrap_or(""), cost(end.cost_usd_micros))
        }
        EventData::JobCancelled(end) => format!("job cancelled{}", cost(end.cost_usd_micros)),
        EventData::TaskQueued { .. } => "queued".into(),
        EventData::TaskStarted { pid: Some(pid), .. } => {
            format!("started (attempt {}, pid {pid})", e.attempt.unwrap_or(1))
        }
        EventData::TaskBlocked { requires, node_labels } => {
            format!("blocked: {}", crate::model::routing::blocked_reason(requires, node_labels))
        }
        EventData::TaskStarted { pid: None, .. } => format!("started (attempt {})", e.attempt.unwrap_or(1)),
        EventData::TaskSucceeded { cached_from: Some(from), .. } => {
            format!("succeeded from the cache (reused task run {from})")
        }
        EventData::TaskSucceeded { duration_ms, cost_usd_micros, cached_from: None } => {
            format!("succeeded in {}{}", duration(*duration_ms), cost(*cost_usd_micros))
        }
        EventData::TaskFailed(failure) => failed(e.attempt.unwrap_or(0), failure),
        EventData::TaskRetryScheduled { delay_ms, next_attempt } => {
            format!("retry {next_attempt} in {}", duration(*delay_ms))
        }
        EventData::TaskDeadLettered { reason, detail } => {
            let why = detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default();
            format!("dead: {}{why} (gaffer retry {} to run it again)", reason.as_str(), e.task_run.unwrap_or(0))
        }
        EventData::TaskCancelled { .. } => "cancelled".into(),
        EventData::TaskWarning { message } => format!("warning: {message}"),
        EventData::TaskSkipped => "skipped".into(),
        EventData::TaskWaiting { wait_for } => {
            format!("waiting for `{wait_for}` (gaffer signal j{} {wait_for} to release it)", e.job_run.unwrap_or(0))
        }
        EventData::ScheduleFired { scheduled_for_ms } => format!("schedule fired (slot {})", slot(*scheduled_for_ms)),
        EventData::ScheduleSkipped { scheduled_for_ms, reason } => {
            format!("schedule slot {} skipped: {reason}", slot(*scheduled_for_ms))
        }
        EventData::WorkerRestarted { worker, reason, .. } => format!("worker {worker} restarted ({reason})"),
        EventData::QueueCircuitOpened { failures, within_ms, until_ms } => format!(
            "queue {}: circuit opened after {failures} failed attempts within {}; nothing starts from it until {}",
            e.queue.as_deref().unwrap_or("?"),
            duration(*within_ms),
            crate::engine::rfc3339_ms(*until_ms)
        ),
        EventData::QueueCircuitClosed => {
            format!("queue {}: circuit closed, starting again", e.queue.as_deref().unwrap_or("?"))
        }
        EventData::BudgetRaised { scope, limit_usd_micros } => {
            format!("{} budget raised to {} by a retry", scope.as_str(), dollars(*limit_usd_micros))
        }
        EventData::ResourceExhausted { detail, delay_ms } => format!(
            "could not start, the machine is out of resources ({detail}); not counted, tries again in {}",
            duration(*delay_ms)
        ),
        EventData::BudgetExceeded { scope, limit_usd_micros, spent_usd_micros } => format!(
            "{} budget exceeded: spent {} of {}",
            scope.as_str(),
            dollars(*spent_usd_micros),
            dollars(*limit_usd_micros)
        ),
        // The task run's end (`failed`, not a dead letter): a person reading along sees why the
        // job run goes on after the failed attempt above.
        EventData::TaskHandled => "failed, handled by a transition (the job run goes on)".into(),
        EventData::TaskCost { .. } | EventData::TaskProgress { .. } | EventData::TransitionFired { .. } => return None,
    })
}

/// The `HH:MM:SS` of a schedule's slot.
fn slot(scheduled_for_ms: u64) -> String {
    crate::engine::rfc3339_ms(scheduled_for_ms).get(11..19).unwrap_or("?").to_string()
}

fn failed(attempt: u32, f: &AttemptFailure) -> String {
    let reason = f.reason;
    let mut text = format!("attempt {attempt} failed: {}", reason.as_str());
    if let Some(code) = f.exit_code {
        // "exit_code 3" reads as the reason it is; otherwise the code is a detail.
        text.push_str(&if reason == FailReason::ExitCode {
            format!(" {code}")
        } else {
            format!(" (exit code {code})")
        });
    }
    if let Some(signal) = f.signal {
        text.push_str(&format!(" (signal {signal})"));
    }
    if let Some(detail) = &f.detail {
        text.push_str(&format!(": {detail}"));
    }
    text
}

/// `950ms`, `2.4s`, `3m05s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// `2/3`: attempts used in the current series of a task run over its `max_attempts` (`2/?`
/// while the maximum is not known yet). The one way CLI and TUI show it.
pub fn tries(used_in_series: u64, max_attempts: u64) -> String {
    if max_attempts == 0 { format!("{used_in_series}/?") } else { format!("{used_in_series}/{max_attempts}") }
}

/// `$0.0123`, for summaries.
pub fn dollars(micros: u64) -> String {
    format!("${}", format_usd(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_task_and_what_happened() {
        let failure = AttemptFailure { reason: FailReason::ExitCode, exit_code: Some(3), signal: None, detail: None };
        let mut e = EngineEvent::new(EventData::TaskFailed(failure), 0);
        (e.job, e.job_run, e.task, e.task_run, e.attempt) =
            (Some("report".into()), Some(1), Some("fetch".into()), Some(7), Some(2));
        let line = human_line(&e).expect("a line");
        assert!(line.contains(" #7 report.fetch "), "{line}");
        assert!(line.ends_with(" attempt 2 failed: exit_code 3"), "{line}");
        e.instance =
            Some(crate::engine::Instance { iteration: 2, item_index: Some(3), compensation: false, fanout: false });
        let line = human_line(&e).expect("a line");
        assert!(line.contains(" #7 report.fetch#2[3] "), "{line}");
        assert_eq!(duration(2_400), "2.4s");
        assert_eq!(duration(185_000), "3m05s");
    }
}
