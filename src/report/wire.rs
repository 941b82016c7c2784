//! The wire's own types: task runs and job runs as `--json`, the control API and the engine
//! snapshot carry them (SPEC §4.1). A serializable type is a boundary: the store's records
//! (`store::records`) may change layout without changing one byte of this JSON, and a view
//! reads these, never the records. The fields keep units in their Rust names (`_ms`,
//! `_micros`); on the wire they are the documented decimal dollars and RFC 3339 times.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{FailReason, JobState, TaskState};
use crate::store::{JobRunRecord, TaskRunKind, TaskRunRecord};

/// A task run on the wire: `tasks --json` items, `show ID --json` (with `attempts` added), the
/// API's answers and `EngineSnapshot::task_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRunView {
    pub id: u64,
    pub job: String,
    pub job_run: u64,
    pub task: String,
    #[serde(with = "name")]
    pub state: TaskState,
    pub attempt: u32,
    pub attempts_in_series: u32,
    pub max_attempts: u32,
    pub queue: String,
    pub priority: u8,
    #[serde(rename = "cost_usd", with = "usd")]
    pub cost_usd_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub outputs: BTreeMap<String, String>,
    #[serde(with = "optional_name")]
    pub reason: Option<FailReason>,
    pub detail: Option<String>,
    pub exit_code: Option<i32>,
    pub progress: Option<String>,
    #[serde(rename = "created_at", with = "time")]
    pub created_at_ms: u64,
    #[serde(rename = "started_at", with = "optional_time")]
    pub started_at_ms: Option<u64>,
    #[serde(rename = "ended_at", with = "optional_time")]
    pub ended_at_ms: Option<u64>,
    #[serde(rename = "not_before", with = "optional_time")]
    pub not_before_ms: Option<u64>,
    /// SPEC §2.2: 1 for the task's first run in its job run, 2 for the next …
    pub iteration: u32,
    /// Fan-out: the item's place (0-based) and the item itself, as the JSON value it is.
    pub item_index: Option<u32>,
    pub item: Option<Value>,
    /// `task`, or `compensation` for a run that undoes a succeeded one (always present).
    #[serde(with = "name")]
    pub kind: TaskRunKind,
    /// For a compensation: the task run it undoes (its `GAFFER_COMPENSATES`); else null.
    pub compensates: Option<u64>,
    /// For a task run a transition started: the task run it came from and the `on` that
    /// matched; else null (also absent in an older gaffer's answer).
    #[serde(default)]
    pub reached_by: Option<ReachedByView>,
    /// Node labels a node must have to start it (`requires`); absent when it requires none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

/// `reached_by` on the wire: `{"from_task_run": 4, "on": "success"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachedByView {
    pub from_task_run: u64,
    pub on: String,
}

impl From<&TaskRunRecord> for TaskRunView {
    fn from(t: &TaskRunRecord) -> TaskRunView {
        TaskRunView {
            id: t.id,
            job: t.job.clone(),
            job_run: t.job_run,
            task: t.task.clone(),
            state: t.state,
            attempt: t.attempt,
            attempts_in_series: t.attempts_in_series(),
            max_attempts: t.max_attempts,
            queue: t.queue.clone(),
            priority: t.priority,
            cost_usd_micros: t.cost_usd_micros,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            outputs: t.outputs.clone(),
            reason: t.reason,
            detail: t.detail.clone(),
            exit_code: t.exit_code,
            progress: t.progress.clone(),
            created_at_ms: t.created_at_ms,
            started_at_ms: t.started_at_ms,
            ended_at_ms: t.ended_at_ms,
            not_before_ms: t.not_before_ms,
            iteration: t.iteration,
            item_index: t.item_index,
            // Stored as JSON text; text that is not JSON (never written so) goes as a string.
            item: t.item.as_ref().map(|text| serde_json::from_str(text).unwrap_or_else(|_| Value::from(text.as_str()))),
            kind: t.kind,
            compensates: t.compensates,
            reached_by: t
                .reached_by
                .as_ref()
                .map(|by| ReachedByView { from_task_run: by.from_task_run, on: by.on.clone() }),
            requires: t.requires.clone(),
        }
    }
}

impl TaskRunView {
    /// A task run as created with its job run (`TaskRunRecord::pending`): for fixtures.
    pub fn pending(id: u64, job_run: u64, job: &str, task: &str, now_ms: u64) -> TaskRunView {
        TaskRunView::from(&TaskRunRecord::pending(id, job_run, job, task, now_ms))
    }

    /// A compensation (saga) rather than the task's own run.
    pub fn is_compensation(&self) -> bool {
        self.kind == TaskRunKind::Compensation
    }

    /// How people read its name: `review#2`, `fetch[3]` (`model::fanout::label`).
    pub fn label(&self) -> String {
        crate::model::fanout::label(&self.task, self.iteration, self.item_index, self.is_compensation())
    }
}

/// A job run on the wire: `jobs --json` items, `show jN --json` (with `tasks` added), the API's
/// answers and `EngineSnapshot::job_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRunView {
    pub id: u64,
    pub job: String,
    #[serde(with = "name")]
    pub state: JobState,
    pub params: BTreeMap<String, String>,
    #[serde(rename = "cost_usd", with = "usd")]
    pub cost_usd_micros: u64,
    #[serde(rename = "started_at", with = "time")]
    pub created_at_ms: u64,
    #[serde(rename = "ended_at", with = "optional_time")]
    pub ended_at_ms: Option<u64>,
    pub reason: Option<String>,
}

impl From<&JobRunRecord> for JobRunView {
    fn from(j: &JobRunRecord) -> JobRunView {
        JobRunView {
            id: j.id,
            job: j.job.clone(),
            state: j.state,
            params: j.params.clone(),
            cost_usd_micros: j.cost_usd_micros,
            created_at_ms: j.created_at_ms,
            ended_at_ms: j.ended_at_ms,
            reason: j.reason.clone(),
        }
    }
}

/// `iteration` and `item_index` of a task run's JSON (`--json`, an API answer); absent: a
/// task's first run, no item (an older gaffer's answer). Events carry theirs typed
/// (`engine::Instance`).
fn instance_in(fields: &serde_json::Map<String, Value>) -> (u32, Option<u32>) {
    let small = |key| fields.get(key).and_then(Value::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    (small("iteration").unwrap_or(1), small("item_index"))
}

/// `model::fanout::label` of a task run in JSON: `review#2`, `fetch[3]`.
pub fn label_in(task: &str, fields: &serde_json::Map<String, Value>) -> String {
    let (iteration, item_index) = instance_in(fields);
    let compensation = fields.get("kind").and_then(Value::as_str) == Some(TaskRunKind::Compensation.as_str());
    crate::model::fanout::label(task, iteration, item_index, compensation)
}

/// A value `serde_json` holds, as the wire has it.
pub fn to_value(view: &impl Serialize) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// The enums whose wire form is their documented name.
pub trait Named: Sized + Copy {
    fn name(self) -> &'static str;
    fn from_name(name: &str) -> Option<Self>;
}

/// Each of these names itself with `as_str` and reads the name back with `parse`.
macro_rules! named_by_as_str {
    ($($t:ty),*) => {$(
        impl Named for $t {
            fn name(self) -> &'static str {
                self.as_str()
            }
            fn from_name(name: &str) -> Option<Self> {
                <$t>::parse(name)
            }
        }
    )*};
}

named_by_as_str!(TaskState, JobState, FailReason, TaskRunKind);

fn unknown<E: serde::de::Error>(name: &str) -> E {
    E::custom(format!("unknown name `{name}`"))
}

mod name {
    use super::{Named, unknown};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: Named>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Named>(d: D) -> Result<T, D::Error> {
        let name = String::deserialize(d)?;
        T::from_name(&name).ok_or_else(|| unknown(&name))
    }
}

mod optional_name {
    use super::{Named, unknown};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: Named>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_str(v.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Named>(d: D) -> Result<Option<T>, D::Error> {
        let Some(name) = Option::<String>::deserialize(d)? else { return Ok(None) };
        T::from_name(&name).map(Some).ok_or_else(|| unknown(&name))
    }
}

/// Micro-dollars as a decimal number of dollars (`model::money::usd_json`).
mod usd {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    use crate::model::money::{micros_of_json, usd_json};

    pub fn serialize<S: Serializer>(micros: &u64, s: S) -> Result<S::Ok, S::Error> {
        usd_json(*micros).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(micros_of_json(&Value::deserialize(d)?))
    }
}

/// Milliseconds since the epoch as an RFC 3339 UTC time (`engine::rfc3339_ms`).
mod time {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::engine::rfc3339_ms(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        ms_of(&text).ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text}")))
    }

    pub fn ms_of(text: &str) -> Option<u64> {
        crate::engine::parse_rfc3339_ms(text)
    }
}

mod optional_time {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::time::serialize(ms, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        super::time::ms_of(&text)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON `tasks --json` printed before the wire had its own type, field for field, plus
    /// SPEC §2.2's instance fields.
    #[test]
    fn a_task_run_keeps_its_json_and_gains_the_instance_fields() {
        let mut t = TaskRunRecord::pending(3, 2, "report", "fetch", 1_764_600_000_123);
        (t.state, t.attempt, t.cost_usd_micros, t.reason, t.exit_code) =
            (TaskState::Dead, 2, 8_700, Some(FailReason::ExitCode), Some(3));
        (t.started_at_ms, t.ended_at_ms) = (Some(1_764_600_000_200), Some(1_764_600_001_000));
        t.outputs.insert("answer".into(), "yes".into());
        (t.iteration, t.item_index, t.item) = (2, Some(4), Some(r#"{"os":"linux"}"#.into()));
        t.reached_by = Some(crate::store::records::ReachedBy { from_task_run: 2, on: "failure".into() });
        let json = crate::json::text(&to_value(&TaskRunView::from(&t)));
        let expected = r#"{"id":3,"job":"report","job_run":2,"task":"fetch","state":"dead","attempt":2,"attempts_in_series":2,"max_attempts":3,"queue":"default","priority":50,"cost_usd":0.0087,"input_tokens":0,"output_tokens":0,"outputs":{"answer":"yes"},"reason":"exit_code","detail":null,"exit_code":3,"progress":null,"created_at":"2025-12-01T14:40:00.123Z","started_at":"2025-12-01T14:40:00.200Z","ended_at":"2025-12-01T14:40:01.000Z","not_before":null,"iteration":2,"item_index":4,"item":{"os":"linux"},"kind":"task","compensates":null,"reached_by":{"from_task_run":2,"on":"failure"}}"#;
        assert_eq!(json, expected);
        let back: TaskRunView = serde_json::from_str(&json).expect("the wire reads its own JSON");
        assert_eq!(back, TaskRunView::from(&t));
        assert_eq!(back.label(), "fetch#2[4]");
    }

    #[test]
    fn a_job_run_keeps_its_json() {
        let j = JobRunRecord {
            id: 7,
            job: "report".into(),
            definition: 1,
            params: BTreeMap::from([("topic".into(), "rust".into())]),
            state: JobState::Failed,
            reason: Some("task fetch is dead".into()),
            cost_usd_micros: 12_300,
            created_at_ms: 1_764_600_000_000,
            ended_at_ms: None,
            cancel_requested: false,
            sliced: false,
        };
        let json = crate::json::text(&to_value(&JobRunView::from(&j)));
        let expected = r#"{"id":7,"job":"report","state":"failed","params":{"topic":"rust"},"cost_usd":0.0123,"started_at":"2025-12-01T14:40:00.000Z","ended_at":null,"reason":"task fetch is dead"}"#;
        assert_eq!(json, expected);
        assert_eq!(serde_json::from_str::<JobRunView>(&json).expect("reads back"), JobRunView::from(&j));
    }

    #[test]
    fn json_of_a_task_run_or_event_is_labelled_by_its_instance_fields() {
        let fields = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(label_in("fetch", &fields(serde_json::json!({"iteration": 2, "item_index": 3}))), "fetch#2[3]");
        assert_eq!(label_in("review", &fields(serde_json::json!({"iteration": 3}))), "review#3");
        assert_eq!(label_in("deploy", &fields(serde_json::json!({"kind": "compensation"}))), "deploy (undo)");
        assert_eq!(label_in("deploy", &fields(serde_json::json!({"kind": "task"}))), "deploy");
        assert_eq!(
            label_in("fetch", &fields(serde_json::json!({"item_index": null}))),
            "fetch",
            "absent: the first run"
        );
    }

    /// The series the screen counts from is the one the wire counted.
    #[test]
    fn a_screen_row_from_the_wire_counts_the_same_attempts_in_its_series() {
        for (attempt, series_start) in [(0, 1), (2, 1), (3, 3), (4, 3), (2, 3)] {
            let mut rec = TaskRunRecord::pending(1, 1, "j", "t", 0);
            (rec.attempt, rec.series_start) = (attempt, series_start);
            let row = crate::tui::rows::TaskRun::from(TaskRunView::from(&rec));
            assert_eq!(row.attempts_in_series(), rec.attempts_in_series(), "attempt {attempt}, series {series_start}");
        }
    }
}
