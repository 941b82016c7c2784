//! What the engine tells the world (SPEC §6): every state change, after it is durable.

use serde_json::{Map, Value, json};

pub use crate::model::event_name::EventName;

/// One engine event. The JSON form is the journal line and the `--json` output line.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineEvent {
    pub ts_ms: u64,
    /// `task.succeeded`, `job.started`, … (SPEC §6).
    pub event: EventName,
    pub job: Option<String>,
    pub job_run: Option<u64>,
    pub task: Option<String>,
    pub task_run: Option<u64>,
    pub attempt: Option<u32>,
    pub queue: Option<String>,
    /// The event's extra fields (`reason`, `cost_usd`, `delay_ms`, …).
    pub fields: Map<String, Value>,
}

impl EngineEvent {
    pub fn new(event: EventName, ts_ms: u64) -> EngineEvent {
        EngineEvent {
            ts_ms,
            event,
            job: None,
            job_run: None,
            task: None,
            task_run: None,
            attempt: None,
            queue: None,
            fields: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> EngineEvent {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    pub fn field(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// The JSON object of SPEC §6, common fields first.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("ts".into(), json!(rfc3339_ms(self.ts_ms)));
        obj.insert("event".into(), json!(self.event.as_str()));
        let common: [(&str, Value); 6] = [
            ("job", self.job.clone().into()),
            ("job_run", self.job_run.into()),
            ("task", self.task.clone().into()),
            ("task_run", self.task_run.into()),
            ("attempt", self.attempt.into()),
            ("queue", self.queue.clone().into()),
        ];
        for (key, value) in common {
            if !value.is_null() {
                obj.insert(key.into(), value);
            }
        }
        for (key, value) in &self.fields {
            obj.insert(key.clone(), value.clone());
        }
        Value::Object(obj)
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds (`2026-11-22T13:00:00.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_spec() {
        let mut e = EngineEvent::new(EventName::TaskSucceeded, 1_795_000_000_123)
            .with("duration_ms", 5)
            .with("cost_usd", 0.0123);
        e.job = Some("report".into());
        e.job_run = Some(3);
        e.task = Some("fetch".into());
        e.task_run = Some(9);
        e.attempt = Some(1);
        e.queue = Some("default".into());
        let line = e.to_json().to_string();
        assert!(line.starts_with(r#"{"ts":"2026-11-18T"#), "{line}");
        assert!(line.contains(r#""event":"task.succeeded","job":"report","job_run":3,"task":"fetch","task_run":9,"attempt":1,"queue":"default""#), "{line}");
        assert!(line.ends_with(r#""duration_ms":5,"cost_usd":0.0123}"#), "{line}");
    }
}

impl EngineEvent {
    /// The inverse of `to_json`, for events read from the control socket (`gaffer tui`).
    /// `None` for a line that is not an event gaffer knows.
    pub fn from_json(value: &Value) -> Option<EngineEvent> {
        let obj = value.as_object()?;
        let name = obj.get("event")?.as_str()?;
        let event = EventName::parse(name)?;
        let ts = obj.get("ts").and_then(Value::as_str).and_then(|t| humantime::parse_rfc3339(t).ok());
        let ts_ms = ts.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64);
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(String::from);
        let mut e = EngineEvent::new(event, ts_ms);
        e.job = text("job");
        e.job_run = obj.get("job_run").and_then(Value::as_u64);
        e.task = text("task");
        e.task_run = obj.get("task_run").and_then(Value::as_u64);
        e.attempt = obj.get("attempt").and_then(Value::as_u64).and_then(|a| u32::try_from(a).ok());
        e.queue = text("queue");
        const COMMON: [&str; 8] = ["ts", "event", "job", "job_run", "task", "task_run", "attempt", "queue"];
        for (k, v) in obj.iter().filter(|(k, _)| !COMMON.contains(&k.as_str())) {
            e.fields.insert(k.clone(), v.clone());
        }
        Some(e)
    }
}

#[cfg(test)]
mod round_trip {
    use super::*;

    #[test]
    fn from_json_inverts_to_json() {
        let mut e =
            EngineEvent::new(EventName::TaskFailed, 1_795_000_000_123).with("reason", "timeout").with("exit_code", 3);
        (e.job, e.job_run, e.task, e.task_run, e.attempt, e.queue) =
            (Some("j".into()), Some(1), Some("t".into()), Some(2), Some(3), Some("q".into()));
        assert_eq!(EngineEvent::from_json(&e.to_json()), Some(e));
        assert_eq!(EngineEvent::from_json(&json!({"event": "made.up"})), None);
    }
}

#[cfg(test)]
mod names {
    use super::*;

    /// Regression: the old name list lacked `task.warning`, `task.handled`, `transition.fired`
    /// and `resource.exhausted`, so `gaffer tui` attached to a server dropped those events.
    #[test]
    fn every_name_parses_back_and_every_event_round_trips() {
        for name in EventName::ALL {
            assert_eq!(EventName::parse(name.as_str()), Some(name));
            let e = EngineEvent::new(name, 1_795_000_000_123).with("message", "m");
            assert_eq!(EngineEvent::from_json(&e.to_json()), Some(e), "{name}");
        }
        let distinct: std::collections::HashSet<_> = EventName::ALL.iter().map(|n| n.as_str()).collect();
        assert_eq!(distinct.len(), EventName::ALL.len());
    }
}
