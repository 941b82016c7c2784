//! What the engine tells the world (SPEC §6): every state change, after it is durable.
//!
//! An event is typed end to end: the common fields, which run of a task it is about
//! ([`Instance`]), and [`EventData`], one variant per event name carrying that event's own
//! fields. Producers build a variant, consumers (headless lines, the TUI, the hook rules) match
//! on it; only [`EngineEvent::to_json`] and [`EngineEvent::from_json`] know the JSON keys.
//! Money is micro-dollars here and a decimal number of dollars on the wire
//! (`model::money::usd_json`); times are milliseconds here and RFC 3339 on the wire.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::TransitionOn;
use crate::model::cost::Usage;
use crate::model::money::{micros_of_json, usd_json};
use crate::model::state::FailReason;

pub use crate::model::event_name::{BudgetScope, EventName};

/// One engine event. The JSON form is the journal line and the `--json` output line.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineEvent {
    pub ts_ms: u64,
    pub job: Option<String>,
    pub job_run: Option<u64>,
    pub task: Option<String>,
    pub task_run: Option<u64>,
    pub attempt: Option<u32>,
    pub queue: Option<String>,
    /// Which run of its task a task event is about (SPEC §6); `None` on other events.
    pub instance: Option<Instance>,
    /// The event's name and its own fields.
    pub data: EventData,
}

/// `iteration`, `item_index` and `"kind": "compensation"` of a task event (SPEC §6), or
/// `"kind": "fanout"` for a fanned-out task's group of items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub iteration: u32,
    pub item_index: Option<u32>,
    pub compensation: bool,
    pub fanout: bool,
}

impl Instance {
    /// A task's first run, not an item, not a compensation.
    pub const FIRST: Instance = Instance { iteration: 1, item_index: None, compensation: false, fanout: false };

    /// `model::fanout::label`: `review#2`, `fetch[3]`, `deploy (undo)`.
    pub fn label(&self, task: &str) -> String {
        crate::model::fanout::label(task, self.iteration, self.item_index, self.compensation)
    }
}

/// How a job run started: new (with its params, secrets as `***`), or reopened by a retry
/// (`from` the task of `retry --from`).
#[derive(Debug, Clone, PartialEq)]
pub enum JobStart {
    New { params: BTreeMap<String, String> },
    Retry { from: Option<String> },
}

/// `job.succeeded`, `job.failed`, `job.cancelled`: what the job run cost, and why it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnd {
    pub cost_usd_micros: u64,
    pub reason: Option<String>,
}

/// `task.failed`: one failed attempt (the last one too).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFailure {
    pub reason: FailReason,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub detail: Option<String>,
}

/// `hook.failed`: a hook that could not run or did not exit 0; the job run is not touched.
#[derive(Debug, Clone, PartialEq)]
pub struct HookFailure {
    /// `on_failure`, `on_dead_letter`, `on_budget`.
    pub hook: String,
    /// `job` or `queue`.
    pub level: String,
    pub for_event: EventName,
    pub reason: String,
    pub detail: String,
    pub exit_code: Option<i32>,
    /// The hook's log, relative to the state dir; `None` when it never ran.
    pub log: Option<String>,
}

/// One variant per [`EventName`], each with the fields SPEC §6 (and README, for gaffer's own
/// events) gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    JobStarted(JobStart),
    JobSucceeded(JobEnd),
    JobFailed(JobEnd),
    JobCancelled(JobEnd),
    /// `retry --definition current` switched the run to the file in use.
    JobRedefined {
        from_definition: u64,
        to_definition: u64,
        changes: Vec<String>,
    },
    /// `series_start` when a new series of attempts begins (a retry).
    TaskQueued {
        priority: u8,
        series_start: Option<u32>,
    },
    TaskStarted {
        priority: u8,
        pid: Option<u32>,
    },
    /// `cached_from`: the task run whose result was reused (`"cached": true`).
    TaskSucceeded {
        duration_ms: u64,
        cost_usd_micros: u64,
        cached_from: Option<u64>,
    },
    TaskFailed(AttemptFailure),
    TaskRetryScheduled {
        delay_ms: u64,
        next_attempt: u32,
    },
    /// `detail` when no failed attempt said why (a `for_each` that cannot be rendered).
    TaskDeadLettered {
        reason: FailReason,
        detail: Option<String>,
    },
    /// `from_dead`: a dead letter was cancelled (`"from": "dead"`).
    TaskCancelled {
        from_dead: bool,
    },
    TaskSkipped,
    TaskWaiting {
        wait_for: String,
    },
    /// Queued, but this node lacks labels it `requires`: it waits for a node that has them.
    TaskBlocked {
        requires: Vec<String>,
        node_labels: Vec<String>,
    },
    /// `unpriced`: tokens no price covers, counted as $0.
    TaskCost {
        usage: Usage,
        model: Option<String>,
        unpriced: bool,
    },
    TaskProgress {
        message: String,
    },
    TaskWarning {
        message: String,
    },
    TaskHandled,
    /// A transition of task run `from_task_run` fired towards task `to`.
    TransitionFired {
        from_task_run: u64,
        on: TransitionOn,
        to: String,
    },
    ResourceExhausted {
        detail: String,
        delay_ms: u64,
    },
    WorkerRestarted {
        worker: u64,
        reason: String,
        restarts: u32,
    },
    ScheduleFired {
        scheduled_for_ms: u64,
    },
    ScheduleSkipped {
        scheduled_for_ms: u64,
        reason: String,
    },
    BudgetExceeded {
        scope: BudgetScope,
        limit_usd_micros: u64,
        spent_usd_micros: u64,
    },
    BudgetRaised {
        scope: BudgetScope,
        limit_usd_micros: u64,
    },
    QueueCircuitOpened {
        failures: u32,
        within_ms: u64,
        until_ms: u64,
    },
    QueueCircuitClosed,
    HookFailed(HookFailure),
}

impl EventData {
    /// The event's name (the JSON `event` tag).
    pub fn name(&self) -> EventName {
        match self {
            EventData::JobStarted(_) => EventName::JobStarted,
            EventData::JobSucceeded(_) => EventName::JobSucceeded,
            EventData::JobFailed(_) => EventName::JobFailed,
            EventData::JobCancelled(_) => EventName::JobCancelled,
            EventData::JobRedefined { .. } => EventName::JobRedefined,
            EventData::TaskQueued { .. } => EventName::TaskQueued,
            EventData::TaskStarted { .. } => EventName::TaskStarted,
            EventData::TaskSucceeded { .. } => EventName::TaskSucceeded,
            EventData::TaskFailed(_) => EventName::TaskFailed,
            EventData::TaskRetryScheduled { .. } => EventName::TaskRetryScheduled,
            EventData::TaskDeadLettered { .. } => EventName::TaskDeadLettered,
            EventData::TaskCancelled { .. } => EventName::TaskCancelled,
            EventData::TaskSkipped => EventName::TaskSkipped,
            EventData::TaskWaiting { .. } => EventName::TaskWaiting,
            EventData::TaskBlocked { .. } => EventName::TaskBlocked,
            EventData::TaskCost { .. } => EventName::TaskCost,
            EventData::TaskProgress { .. } => EventName::TaskProgress,
            EventData::TaskWarning { .. } => EventName::TaskWarning,
            EventData::TaskHandled => EventName::TaskHandled,
            EventData::TransitionFired { .. } => EventName::TransitionFired,
            EventData::ResourceExhausted { .. } => EventName::ResourceExhausted,
            EventData::WorkerRestarted { .. } => EventName::WorkerRestarted,
            EventData::ScheduleFired { .. } => EventName::ScheduleFired,
            EventData::ScheduleSkipped { .. } => EventName::ScheduleSkipped,
            EventData::BudgetExceeded { .. } => EventName::BudgetExceeded,
            EventData::BudgetRaised { .. } => EventName::BudgetRaised,
            EventData::QueueCircuitOpened { .. } => EventName::QueueCircuitOpened,
            EventData::QueueCircuitClosed => EventName::QueueCircuitClosed,
            EventData::HookFailed(_) => EventName::HookFailed,
        }
    }

    /// The event's own fields as JSON, in the order they are written; `None` for an optional
    /// field the event does not have (it is left out, not written as null).
    fn fields(&self) -> Vec<Option<(&'static str, Value)>> {
        match self {
            EventData::JobStarted(JobStart::New { params }) => vec![put("params", params)],
            EventData::JobStarted(JobStart::Retry { from }) => vec![put("retry", true), opt("from", from)],
            EventData::JobSucceeded(end) | EventData::JobFailed(end) | EventData::JobCancelled(end) => {
                vec![usd("cost_usd", end.cost_usd_micros), opt("reason", &end.reason)]
            }
            EventData::JobRedefined { from_definition, to_definition, changes } => vec![
                put("from_definition", format!("{from_definition:016x}")),
                put("to_definition", format!("{to_definition:016x}")),
                put("changes", changes),
            ],
            EventData::TaskQueued { priority, series_start } => {
                vec![put("priority", priority), opt("series_start", series_start)]
            }
            EventData::TaskStarted { priority, pid } => vec![put("priority", priority), opt("pid", pid)],
            EventData::TaskSucceeded { duration_ms, cost_usd_micros, cached_from } => vec![
                put("duration_ms", duration_ms),
                usd("cost_usd", *cost_usd_micros),
                cached_from.map(|_| ("cached", json!(true))),
                opt("from_task_run", cached_from),
            ],
            EventData::TaskFailed(f) => vec![
                put("reason", f.reason.as_str()),
                opt("exit_code", &f.exit_code),
                opt("signal", &f.signal),
                opt("detail", &f.detail),
            ],
            EventData::TaskRetryScheduled { delay_ms, next_attempt } => {
                vec![put("delay_ms", delay_ms), put("next_attempt", next_attempt)]
            }
            EventData::TaskDeadLettered { reason, detail } => {
                vec![put("reason", reason.as_str()), opt("detail", detail)]
            }
            EventData::TaskCancelled { from_dead } => vec![from_dead.then(|| ("from", json!("dead")))],
            EventData::TaskSkipped | EventData::TaskHandled | EventData::QueueCircuitClosed => Vec::new(),
            EventData::TaskWaiting { wait_for } => vec![put("wait_for", wait_for)],
            EventData::TaskBlocked { requires, node_labels } => {
                vec![put("requires", requires), put("node_labels", node_labels)]
            }
            EventData::TaskCost { usage, model, unpriced } => vec![
                usd("usd", usage.usd_micros),
                put("input_tokens", usage.input_tokens),
                put("output_tokens", usage.output_tokens),
                put("cache_read_tokens", usage.cache_read_tokens),
                put("cache_write_tokens", usage.cache_write_tokens),
                opt("model", model),
                unpriced.then(|| ("unpriced", json!(true))),
            ],
            EventData::TaskProgress { message } | EventData::TaskWarning { message } => vec![put("message", message)],
            EventData::TransitionFired { from_task_run, on, to } => {
                vec![put("from_task_run", from_task_run), put("on", on.as_str()), put("to", to)]
            }
            EventData::ResourceExhausted { detail, delay_ms } => vec![put("detail", detail), put("delay_ms", delay_ms)],
            EventData::WorkerRestarted { worker, reason, restarts } => {
                vec![put("worker", worker), put("reason", reason), put("restarts", restarts)]
            }
            EventData::ScheduleFired { scheduled_for_ms } => vec![put("scheduled_for", rfc3339_ms(*scheduled_for_ms))],
            EventData::ScheduleSkipped { scheduled_for_ms, reason } => {
                vec![put("scheduled_for", rfc3339_ms(*scheduled_for_ms)), put("reason", reason)]
            }
            EventData::BudgetExceeded { scope, limit_usd_micros, spent_usd_micros } => vec![
                put("scope", scope.as_str()),
                usd("limit_usd", *limit_usd_micros),
                usd("spent_usd", *spent_usd_micros),
            ],
            EventData::BudgetRaised { scope, limit_usd_micros } => {
                vec![put("scope", scope.as_str()), usd("limit_usd", *limit_usd_micros)]
            }
            EventData::QueueCircuitOpened { failures, within_ms, until_ms } => {
                vec![put("failures", failures), put("within_ms", within_ms), put("until", rfc3339_ms(*until_ms))]
            }
            EventData::HookFailed(h) => vec![
                put("hook", &h.hook),
                put("level", &h.level),
                put("for_event", h.for_event.as_str()),
                put("reason", &h.reason),
                put("detail", &h.detail),
                opt("exit_code", &h.exit_code),
                opt("log", &h.log),
            ],
        }
    }

    /// The inverse of `fields`: `None` when a field the event must have is missing or is not
    /// of its type.
    fn parse(name: EventName, f: &Fields) -> Option<EventData> {
        Some(match name {
            EventName::JobStarted if f.flag("retry") => EventData::JobStarted(JobStart::Retry { from: f.text("from") }),
            EventName::JobStarted => {
                let params = match f.0.get("params") {
                    None => BTreeMap::new(),
                    Some(v) => serde_json::from_value(v.clone()).ok()?,
                };
                EventData::JobStarted(JobStart::New { params })
            }
            EventName::JobSucceeded => EventData::JobSucceeded(f.job_end()?),
            EventName::JobFailed => EventData::JobFailed(f.job_end()?),
            EventName::JobCancelled => EventData::JobCancelled(f.job_end()?),
            EventName::JobRedefined => EventData::JobRedefined {
                from_definition: u64::from_str_radix(&f.text("from_definition")?, 16).ok()?,
                to_definition: u64::from_str_radix(&f.text("to_definition")?, 16).ok()?,
                changes: serde_json::from_value(f.0.get("changes")?.clone()).ok()?,
            },
            EventName::TaskQueued => {
                EventData::TaskQueued { priority: f.small("priority")?, series_start: f.small("series_start") }
            }
            EventName::TaskStarted => EventData::TaskStarted { priority: f.small("priority")?, pid: f.small("pid") },
            EventName::TaskSucceeded => EventData::TaskSucceeded {
                duration_ms: f.u64("duration_ms")?,
                cost_usd_micros: f.usd("cost_usd")?,
                cached_from: f.flag("cached").then(|| f.u64("from_task_run")).flatten(),
            },
            EventName::TaskFailed => EventData::TaskFailed(AttemptFailure {
                reason: FailReason::parse(&f.text("reason")?)?,
                exit_code: f.int("exit_code"),
                signal: f.int("signal"),
                detail: f.text("detail"),
            }),
            EventName::TaskRetryScheduled => {
                EventData::TaskRetryScheduled { delay_ms: f.u64("delay_ms")?, next_attempt: f.small("next_attempt")? }
            }
            EventName::TaskDeadLettered => {
                EventData::TaskDeadLettered { reason: FailReason::parse(&f.text("reason")?)?, detail: f.text("detail") }
            }
            EventName::TaskCancelled => {
                EventData::TaskCancelled { from_dead: f.text("from").as_deref() == Some("dead") }
            }
            EventName::TaskSkipped => EventData::TaskSkipped,
            EventName::TaskWaiting => EventData::TaskWaiting { wait_for: f.text("wait_for")? },
            EventName::TaskBlocked => EventData::TaskBlocked {
                requires: serde_json::from_value(f.0.get("requires")?.clone()).ok()?,
                node_labels: serde_json::from_value(f.0.get("node_labels")?.clone()).ok()?,
            },
            EventName::TaskCost => EventData::TaskCost {
                usage: Usage {
                    usd_micros: f.usd("usd")?,
                    input_tokens: f.u64("input_tokens").unwrap_or(0),
                    output_tokens: f.u64("output_tokens").unwrap_or(0),
                    cache_read_tokens: f.u64("cache_read_tokens").unwrap_or(0),
                    cache_write_tokens: f.u64("cache_write_tokens").unwrap_or(0),
                },
                model: f.text("model"),
                unpriced: f.flag("unpriced"),
            },
            EventName::TaskProgress => EventData::TaskProgress { message: f.text("message")? },
            EventName::TaskWarning => EventData::TaskWarning { message: f.text("message")? },
            EventName::TaskHandled => EventData::TaskHandled,
            EventName::TransitionFired => EventData::TransitionFired {
                from_task_run: f.u64("from_task_run")?,
                on: TransitionOn::parse(&f.text("on")?)?,
                to: f.text("to")?,
            },
            EventName::ResourceExhausted => {
                EventData::ResourceExhausted { detail: f.text("detail")?, delay_ms: f.u64("delay_ms")? }
            }
            EventName::WorkerRestarted => EventData::WorkerRestarted {
                worker: f.u64("worker")?,
                reason: f.text("reason")?,
                restarts: f.small("restarts")?,
            },
            EventName::ScheduleFired => EventData::ScheduleFired { scheduled_for_ms: f.time("scheduled_for")? },
            EventName::ScheduleSkipped => {
                EventData::ScheduleSkipped { scheduled_for_ms: f.time("scheduled_for")?, reason: f.text("reason")? }
            }
            EventName::BudgetExceeded => EventData::BudgetExceeded {
                scope: BudgetScope::parse(&f.text("scope")?)?,
                limit_usd_micros: f.usd("limit_usd")?,
                spent_usd_micros: f.usd("spent_usd")?,
            },
            EventName::BudgetRaised => EventData::BudgetRaised {
                scope: BudgetScope::parse(&f.text("scope")?)?,
                limit_usd_micros: f.usd("limit_usd")?,
            },
            EventName::QueueCircuitOpened => EventData::QueueCircuitOpened {
                failures: f.small("failures")?,
                within_ms: f.u64("within_ms")?,
                until_ms: f.time("until")?,
            },
            EventName::QueueCircuitClosed => EventData::QueueCircuitClosed,
            EventName::HookFailed => EventData::HookFailed(HookFailure {
                hook: f.text("hook")?,
                level: f.text("level")?,
                for_event: EventName::parse(&f.text("for_event")?)?,
                reason: f.text("reason")?,
                detail: f.text("detail").unwrap_or_default(),
                exit_code: f.int("exit_code"),
                log: f.text("log"),
            }),
        })
    }
}

/// A field every event of its kind has.
fn put(key: &'static str, value: impl Serialize) -> Option<(&'static str, Value)> {
    Some((key, json!(value)))
}

/// A field written only when there is a value.
fn opt<T: Serialize>(key: &'static str, value: &Option<T>) -> Option<(&'static str, Value)> {
    value.as_ref().map(|v| (key, json!(v)))
}

/// Money: micro-dollars as a decimal number of dollars.
fn usd(key: &'static str, micros: u64) -> Option<(&'static str, Value)> {
    Some((key, usd_json(micros)))
}

/// The fields of an event's JSON object, read by type.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn text(&self, key: &str) -> Option<String> {
        self.0.get(key).and_then(Value::as_str).map(String::from)
    }

    fn u64(&self, key: &str) -> Option<u64> {
        self.0.get(key).and_then(Value::as_u64)
    }

    /// An unsigned number that must fit its type (`u8` priority, `u32` attempt numbers).
    fn small<T: TryFrom<u64>>(&self, key: &str) -> Option<T> {
        self.u64(key).and_then(|n| T::try_from(n).ok())
    }

    fn int(&self, key: &str) -> Option<i32> {
        self.0.get(key).and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok())
    }

    fn flag(&self, key: &str) -> bool {
        self.0.get(key).and_then(Value::as_bool) == Some(true)
    }

    /// Dollars (a JSON number) as micro-dollars.
    fn usd(&self, key: &str) -> Option<u64> {
        self.0.get(key).filter(|v| v.is_number()).map(micros_of_json)
    }

    /// An RFC 3339 time as milliseconds since the epoch.
    fn time(&self, key: &str) -> Option<u64> {
        parse_rfc3339_ms(self.0.get(key)?.as_str()?)
    }

    fn job_end(&self) -> Option<JobEnd> {
        Some(JobEnd { cost_usd_micros: self.usd("cost_usd")?, reason: self.text("reason") })
    }

    fn instance(&self) -> Option<Instance> {
        Some(Instance {
            iteration: self.small("iteration")?,
            item_index: self.small("item_index"),
            compensation: self.text("kind").as_deref() == Some("compensation"),
            fanout: self.text("kind").as_deref() == Some("fanout"),
        })
    }
}

impl EngineEvent {
    pub fn new(data: EventData, ts_ms: u64) -> EngineEvent {
        EngineEvent {
            ts_ms,
            job: None,
            job_run: None,
            task: None,
            task_run: None,
            attempt: None,
            queue: None,
            instance: None,
            data,
        }
    }

    /// `task.succeeded`, `job.started`, … (SPEC §6).
    pub fn name(&self) -> EventName {
        self.data.name()
    }

    /// The task of a task event with the run it is (`review#2`, `fetch[3]`), else the task.
    pub fn task_label(&self) -> Option<String> {
        let task = self.task.as_deref()?;
        Some(self.instance.unwrap_or(Instance::FIRST).label(task))
    }

    /// The JSON object of SPEC §6: common fields first, then the instance, then the event's own.
    pub fn to_json(&self) -> Value {
        Value::Object(self.fields().into_iter().map(|(key, value)| (key.to_string(), value)).collect::<Map<_, _>>())
    }

    /// [`to_json`](Self::to_json) as one line of text (`crate::json::text`), the same bytes,
    /// written without building the object (a map with hashed, allocated keys): the journal,
    /// the cluster's stream and `--json` encode every event this way.
    pub fn to_json_text(&self) -> String {
        let mut out = Vec::with_capacity(256);
        if !self.write_json_text(&mut out) {
            return crate::json::text(&Ordered(self.fields()));
        }
        String::from_utf8(out).unwrap_or_else(|_| crate::json::text(&Ordered(self.fields())))
    }

    /// [`to_json_text`](Self::to_json_text)'s bytes: the fields of [`fields`](Self::fields)
    /// in their order, written as they are (no `Value` built, nothing cloned, no `fmt`); the
    /// own fields of events other than a task's queued, started or succeeded through
    /// `EventData::fields` and `crate::json`. `false` if a value could not be written (then
    /// `fields` decides). No key of `EventData::fields` is a common one, and none comes twice
    /// (`the_json_line_is_the_json_objects_text` compares every event with `to_json`).
    fn write_json_text(&self, out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339_ms(out, self.ts_ms);
        out.extend_from_slice(b"\",\"event\":");
        push_json_str(out, self.name().as_str());
        push_text(out, "job", self.job.as_deref());
        push_number(out, "job_run", self.job_run);
        push_text(out, "task", self.task.as_deref());
        push_number(out, "task_run", self.task_run);
        push_number(out, "attempt", self.attempt.map(u64::from));
        push_text(out, "queue", self.queue.as_deref());
        if let Some(i) = &self.instance {
            push_number(out, "iteration", Some(u64::from(i.iteration)));
            push_number(out, "item_index", i.item_index.map(u64::from));
            if i.compensation {
                out.extend_from_slice(b",\"kind\":\"compensation\"");
            } else if i.fanout {
                out.extend_from_slice(b",\"kind\":\"fanout\"");
            }
        }
        match &self.data {
            // A no-op task's three events, written without a `Value`.
            EventData::TaskQueued { priority, series_start } => {
                push_number(out, "priority", Some(u64::from(*priority)));
                push_number(out, "series_start", series_start.map(u64::from));
            }
            EventData::TaskStarted { priority, pid } => {
                push_number(out, "priority", Some(u64::from(*priority)));
                push_number(out, "pid", pid.map(u64::from));
            }
            EventData::TaskSucceeded { duration_ms, cost_usd_micros: 0, cached_from } => {
                push_number(out, "duration_ms", Some(*duration_ms));
                // `usd_json(0)` as `crate::json` writes it: a float.
                out.extend_from_slice(b",\"cost_usd\":0.0");
                if cached_from.is_some() {
                    out.extend_from_slice(b",\"cached\":true");
                }
                push_number(out, "from_task_run", *cached_from);
            }
            data => {
                for (key, value) in data.fields().into_iter().flatten() {
                    push_key(out, key);
                    if !crate::json::append_text(out, &value) {
                        return false;
                    }
                }
            }
        }
        out.push(b'}');
        true
    }

    /// The fields of [`to_json`](Self::to_json) in order; a key given twice keeps its first
    /// place and its last value, as a map's insert does.
    fn fields(&self) -> Vec<(&'static str, Value)> {
        let mut obj: Vec<(&'static str, Value)> = Vec::with_capacity(12);
        let mut insert = |key: &'static str, value: Value| match obj.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => obj.push((key, value)),
        };
        insert("ts", json!(rfc3339_ms(self.ts_ms)));
        insert("event", json!(self.name().as_str()));
        let common: [(&'static str, Value); 6] = [
            ("job", self.job.clone().into()),
            ("job_run", self.job_run.into()),
            ("task", self.task.clone().into()),
            ("task_run", self.task_run.into()),
            ("attempt", self.attempt.into()),
            ("queue", self.queue.clone().into()),
        ];
        for (key, value) in common {
            if !value.is_null() {
                insert(key, value);
            }
        }
        if let Some(i) = &self.instance {
            insert("iteration", json!(i.iteration));
            if let Some(k) = i.item_index {
                insert("item_index", json!(k));
            }
            if i.compensation {
                insert("kind", json!("compensation"));
            } else if i.fanout {
                insert("kind", json!("fanout"));
            }
        }
        for (key, value) in self.data.fields().into_iter().flatten() {
            insert(key, value);
        }
        obj
    }

    /// The inverse of `to_json`, for events read from the control socket (`gaffer tui`).
    /// `None` for a line that is not an event gaffer knows, or lacks a field its event has.
    pub fn from_json(value: &Value) -> Option<EngineEvent> {
        let obj = value.as_object()?;
        let name = EventName::parse(obj.get("event")?.as_str()?)?;
        let f = Fields(obj);
        let mut e = EngineEvent::new(EventData::parse(name, &f)?, f.time("ts").unwrap_or(0));
        e.job = f.text("job");
        e.job_run = f.u64("job_run");
        e.task = f.text("task");
        e.task_run = f.u64("task_run");
        e.attempt = f.small("attempt");
        e.queue = f.text("queue");
        e.instance = f.instance();
        Some(e)
    }
}

/// An event's fields serialized as the JSON object they make, in order.
struct Ordered(Vec<(&'static str, Value)>);

impl Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// `,"key":`.
fn push_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `,"key":n`, when there is a number.
fn push_number(out: &mut Vec<u8>, key: &str, n: Option<u64>) {
    if let Some(n) = n {
        push_key(out, key);
        push_digits(out, n);
    }
}

/// `,"key":"text"`, when there is a text.
fn push_text(out: &mut Vec<u8>, key: &str, text: Option<&str>) {
    if let Some(text) = text {
        push_key(out, key);
        push_json_str(out, text);
    }
}

/// `n` in decimal, as serde_json writes an integer.
fn push_digits(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// [`rfc3339_ms`] of `ms`, appended (`2026-11-22T13:00:00.123Z`): the civil date of the day
/// (Howard Hinnant's `civil_from_days`), then the time; past year 9999 through `humantime`.
fn push_rfc3339_ms(out: &mut Vec<u8>, ms: u64) {
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    if year > 9999 {
        out.extend_from_slice(rfc3339_ms(ms).as_bytes());
        return;
    }
    let two = |out: &mut Vec<u8>, n: u64| out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    two(out, year / 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    out.push(b'T');
    let secs = in_day / 1_000;
    two(out, secs / 3_600);
    out.push(b':');
    two(out, secs / 60 % 60);
    out.push(b':');
    two(out, secs % 60);
    out.push(b'.');
    let milli = in_day % 1_000;
    out.extend_from_slice(&[b'0' + (milli / 100) as u8, b'0' + (milli / 10 % 10) as u8, b'0' + (milli % 10) as u8]);
    out.push(b'Z');
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        crate::json::append_text(out, &s);
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds (`2026-11-22T13:00:00.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The inverse of [`rfc3339_ms`] (any RFC 3339 time; `None` before the epoch).
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(time.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests;
