//! Headless output: one human line per state change, or the JSON event stream (SPEC §6).

use std::io::Write;

use crate::engine::{EngineEvent, EventName};
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
        Format::Json => writeln!(out, "{}", crate::json::text(&event.to_json())),
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
    let who = match (&e.task_run, &e.task, &e.job_run, &e.job) {
        (Some(id), Some(task), _, Some(job)) => {
            format!("#{id} {job}.{}", instance_label(e, task))
        }
        (_, _, Some(id), Some(job)) => format!("j{id} {job}"),
        _ => String::from("gaffer"),
    };
    Some(format!("{clock} {who:<28} {what}"))
}

/// The task of a task event labelled by the `iteration` and `item_index` it carries (SPEC §6):
/// `review#2`, `fetch[3]` (`model::fanout::label`).
fn instance_label(e: &EngineEvent, task: &str) -> String {
    crate::report::label_in(task, &e.fields)
}

fn describe(e: &EngineEvent) -> Option<String> {
    let reason = e.str_field("reason").unwrap_or("");
    let cost = e
        .field("cost_usd")
        .map(crate::model::money::micros_of_json)
        .filter(|c| *c > 0)
        .map(|c| format!(", {}", dollars(c)))
        .unwrap_or_default();
    Some(match e.event {
        EventName::JobStarted if e.field("from").is_some() => {
            format!("job run reopened from task `{}` (retry --from)", e.str_field("from").unwrap_or("?"))
        }
        EventName::JobStarted if e.field("retry").is_some() => "job run reopened by a retry".into(),
        EventName::JobRedefined => format!("job run switched to the current definition ({})", changes(e)),
        EventName::HookFailed => format!(
            "hook {} ({}) for {} failed: {reason}: {}",
            e.str_field("hook").unwrap_or("?"),
            e.str_field("level").unwrap_or("?"),
            e.str_field("for_event").unwrap_or("?"),
            e.str_field("detail").unwrap_or("")
        ),
        EventName::JobStarted => "job started".into(),
        EventName::JobSucceeded => format!("job succeeded{cost}"),
        EventName::JobFailed => format!("job failed: {reason}{cost}"),
        EventName::JobCancelled => format!("job cancelled{cost}"),
        EventName::TaskQueued => "queued".into(),
        EventName::TaskStarted => match e.field("pid") {
            Some(pid) => format!("started (attempt {}, pid {pid})", e.attempt.unwrap_or(1)),
            None => format!("started (attempt {})", e.attempt.unwrap_or(1)),
        },
        EventName::TaskSucceeded if e.field("cached").is_some() => {
            format!(
                "succeeded from the cache (reused task run {})",
                e.field("from_task_run").map(|v| v.to_string()).unwrap_or_default()
            )
        }
        EventName::TaskSucceeded => {
            format!("succeeded in {}{cost}", duration(e.field("duration_ms").and_then(|v| v.as_u64()).unwrap_or(0)))
        }
        EventName::TaskFailed => failed(e),
        EventName::TaskRetryScheduled => format!(
            "retry {} in {}",
            e.field("next_attempt").map(|v| v.to_string()).unwrap_or_default(),
            duration(e.field("delay_ms").and_then(|v| v.as_u64()).unwrap_or(0))
        ),
        EventName::TaskDeadLettered => {
            let why = e.str_field("detail").map(|d| format!(": {d}")).unwrap_or_default();
            format!("dead: {reason}{why} (gaffer retry {} to run it again)", e.task_run.unwrap_or(0))
        }
        EventName::TaskCancelled => "cancelled".into(),
        EventName::TaskWarning => format!("warning: {}", e.str_field("message").unwrap_or_default()),
        EventName::TaskSkipped => "skipped".into(),
        EventName::TaskWaiting => {
            let name = e.str_field("wait_for").unwrap_or("?");
            format!("waiting for `{name}` (gaffer signal j{} {name} to release it)", e.job_run.unwrap_or(0))
        }
        EventName::TaskBlocked => {
            let list = |key| -> Vec<String> {
                let items = e.field(key).and_then(|v| v.as_array()).into_iter().flatten();
                items.filter_map(|v| v.as_str().map(String::from)).collect()
            };
            format!("blocked: {}", crate::model::routing::blocked_reason(&list("requires"), &list("node_labels")))
        }
        EventName::ScheduleFired => format!("schedule fired (slot {})", slot(e)),
        EventName::ScheduleSkipped => format!("schedule slot {} skipped: {reason}", slot(e)),
        EventName::WorkerRestarted => {
            format!("worker {} restarted ({reason})", e.field("worker").map(|v| v.to_string()).unwrap_or_default())
        }
        EventName::QueueCircuitOpened => format!(
            "queue {}: circuit opened after {} failed attempts within {}; nothing starts from it until {}",
            e.queue.as_deref().unwrap_or("?"),
            e.field("failures").map(|v| v.to_string()).unwrap_or_default(),
            duration(e.field("within_ms").and_then(|v| v.as_u64()).unwrap_or(0)),
            e.str_field("until").unwrap_or("?")
        ),
        EventName::QueueCircuitClosed => {
            format!("queue {}: circuit closed, starting again", e.queue.as_deref().unwrap_or("?"))
        }
        EventName::BudgetRaised => {
            format!(
                "{} budget raised to {} by a retry",
                e.str_field("scope").unwrap_or("job"),
                dollars_of(e.field("limit_usd"))
            )
        }
        EventName::ResourceExhausted => format!(
            "could not start, the machine is out of resources ({}); not counted, tries again in {}",
            e.str_field("detail").unwrap_or("?"),
            duration(e.field("delay_ms").and_then(|v| v.as_u64()).unwrap_or(0))
        ),
        EventName::BudgetExceeded => format!(
            "{} budget exceeded: spent {} of {}",
            e.str_field("scope").unwrap_or("job"),
            dollars_of(e.field("spent_usd")),
            dollars_of(e.field("limit_usd"))
        ),
        _ => return None,
    })
}

/// The `changes` list of a `job.redefined` event, as one phrase.
fn changes(e: &EngineEvent) -> String {
    let items: Vec<&str> =
        e.field("changes").and_then(|v| v.as_array()).into_iter().flatten().filter_map(|v| v.as_str()).collect();
    items.join("; ")
}

/// The `HH:MM:SS` of a schedule's slot.
fn slot(e: &EngineEvent) -> String {
    e.str_field("scheduled_for").and_then(|t| t.get(11..19)).unwrap_or("?").to_string()
}

fn failed(e: &EngineEvent) -> String {
    let reason = e.str_field("reason").unwrap_or("?");
    let mut text = format!("attempt {} failed: {reason}", e.attempt.unwrap_or(0));
    if let Some(code) = e.field("exit_code") {
        // "exit_code 3" reads as the reason it is; otherwise the code is a detail.
        text.push_str(&if reason == "exit_code" { format!(" {code}") } else { format!(" (exit code {code})") });
    }
    if let Some(signal) = e.field("signal") {
        text.push_str(&format!(" (signal {signal})"));
    }
    if let Some(detail) = e.str_field("detail") {
        text.push_str(&format!(": {detail}"));
    }
    text
}

/// A dollar amount from an event (a JSON number) as `$0.10`.
fn dollars_of(v: Option<&serde_json::Value>) -> String {
    dollars(v.map_or(0, crate::model::money::micros_of_json))
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
        let mut e = EngineEvent::new(EventName::TaskFailed, 0).with("reason", "exit_code").with("exit_code", 3);
        (e.job, e.job_run, e.task, e.task_run, e.attempt) =
            (Some("report".into()), Some(1), Some("fetch".into()), Some(7), Some(2));
        let line = human_line(&e).expect("a line");
        assert!(line.contains(" #7 report.fetch "), "{line}");
        assert!(line.ends_with(" attempt 2 failed: exit_code 3"), "{line}");
        let e = e.with("iteration", 2).with("item_index", 3);
        let line = human_line(&e).expect("a line");
        assert!(line.contains(" #7 report.fetch#2[3] "), "{line}");
        assert_eq!(duration(2_400), "2.4s");
        assert_eq!(duration(185_000), "3m05s");
    }
}
