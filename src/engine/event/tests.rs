use super::*;

fn task_event(data: EventData) -> EngineEvent {
    let mut e = EngineEvent::new(data, 1_795_000_000_123);
    (e.job, e.job_run, e.task, e.task_run, e.attempt, e.queue) =
        (Some("report".into()), Some(3), Some("fetch".into()), Some(9), Some(1), Some("default".into()));
    e.instance = Some(Instance::FIRST);
    e
}

/// One event of each name, with every optional field set where the event has one.
fn sample(name: EventName) -> EngineEvent {
    let end = JobEnd { cost_usd_micros: 2_000_000, reason: Some("task t (#3) dead: exit_code 1".into()) };
    let data = match name {
        EventName::JobStarted => EventData::JobStarted(JobStart::Retry { from: Some("fetch".into()) }),
        EventName::JobSucceeded => EventData::JobSucceeded(JobEnd { cost_usd_micros: 0, reason: None }),
        EventName::JobFailed => EventData::JobFailed(end),
        EventName::JobCancelled => EventData::JobCancelled(end),
        EventName::JobRedefined => EventData::JobRedefined {
            from_definition: 1,
            to_definition: u64::MAX,
            changes: vec!["task b added".into()],
        },
        EventName::TaskQueued => EventData::TaskQueued { priority: 255, series_start: Some(4) },
        EventName::TaskStarted => EventData::TaskStarted { priority: 50, pid: Some(4242) },
        EventName::TaskSucceeded => {
            EventData::TaskSucceeded { duration_ms: 5, cost_usd_micros: 1, cached_from: Some(2) }
        }
        EventName::TaskFailed => EventData::TaskFailed(AttemptFailure {
            reason: FailReason::Timeout,
            exit_code: Some(-1),
            signal: Some(15),
            detail: Some("d".into()),
        }),
        EventName::TaskRetryScheduled => EventData::TaskRetryScheduled { delay_ms: 500, next_attempt: 2 },
        EventName::TaskDeadLettered => {
            EventData::TaskDeadLettered { reason: FailReason::TemplateError, detail: Some("no `x`".into()) }
        }
        EventName::TaskCancelled => EventData::TaskCancelled { from_dead: true },
        EventName::TaskSkipped => EventData::TaskSkipped,
        EventName::TaskBlocked => {
            EventData::TaskBlocked { requires: vec!["gpu".into(), "eu".into()], node_labels: Vec::new() }
        }
        EventName::TaskWaiting => EventData::TaskWaiting { wait_for: "approve".into() },
        EventName::TaskCost => EventData::TaskCost {
            usage: Usage {
                usd_micros: 12_300,
                input_tokens: 1,
                output_tokens: 2,
                cache_read_tokens: 3,
                cache_write_tokens: 4,
            },
            model: Some("m".into()),
            unpriced: true,
        },
        EventName::TaskProgress => EventData::TaskProgress { message: "1/2".into() },
        EventName::TaskWarning => EventData::TaskWarning { message: "w".into() },
        EventName::TaskHandled => EventData::TaskHandled,
        EventName::TransitionFired => {
            EventData::TransitionFired { from_task_run: 7, on: TransitionOn::Failure, to: "fix".into() }
        }
        EventName::ResourceExhausted => EventData::ResourceExhausted { detail: "EMFILE".into(), delay_ms: 100 },
        EventName::WorkerRestarted => EventData::WorkerRestarted { worker: 2, reason: "panic".into(), restarts: 1 },
        EventName::ScheduleFired => EventData::ScheduleFired { scheduled_for_ms: 1_795_000_000_000 },
        EventName::ScheduleSkipped => {
            EventData::ScheduleSkipped { scheduled_for_ms: 1_795_000_000_000, reason: "a run is active".into() }
        }
        EventName::BudgetExceeded => {
            EventData::BudgetExceeded { scope: BudgetScope::Task, limit_usd_micros: 10_000, spent_usd_micros: 20_000 }
        }
        EventName::BudgetRaised => EventData::BudgetRaised { scope: BudgetScope::Job, limit_usd_micros: 3_000_000 },
        EventName::QueueCircuitOpened => {
            EventData::QueueCircuitOpened { failures: 3, within_ms: 60_000, until_ms: 1_795_000_060_123 }
        }
        EventName::QueueCircuitClosed => EventData::QueueCircuitClosed,
        EventName::HookFailed => EventData::HookFailed(HookFailure {
            hook: "on_failure".into(),
            level: "job".into(),
            for_event: EventName::JobFailed,
            reason: "exit_code".into(),
            detail: "exit 7".into(),
            exit_code: Some(7),
            log: Some("logs/1/hooks/j1.job.on_failure.log".into()),
        }),
    };
    task_event(data)
}

#[test]
fn json_shape_matches_spec() {
    let e = task_event(EventData::TaskSucceeded { duration_ms: 5, cost_usd_micros: 12_300, cached_from: None });
    let line = crate::json::text(&e.to_json());
    assert!(line.starts_with(r#"{"ts":"2026-11-18T"#), "{line}");
    assert!(line.contains(r#""event":"task.succeeded","job":"report","job_run":3,"task":"fetch","task_run":9,"attempt":1,"queue":"default","iteration":1"#), "{line}");
    assert!(line.ends_with(r#""duration_ms":5,"cost_usd":0.0123}"#), "{line}");
}

/// Regression: the old name list lacked `task.warning`, `task.handled`, `transition.fired`
/// and `resource.exhausted`, so `gaffer tui` attached to a server dropped those events.
#[test]
fn every_event_round_trips_through_its_json_line() {
    for name in EventName::ALL {
        assert_eq!(EventName::parse(name.as_str()), Some(name));
        let e = sample(name);
        assert_eq!(e.name(), name);
        let line = crate::json::text(&e.to_json());
        let back = serde_json::from_str(&line).ok().and_then(|v| EngineEvent::from_json(&v));
        assert_eq!(back, Some(e), "{line}");
    }
    let distinct: std::collections::HashSet<_> = EventName::ALL.iter().map(|n| n.as_str()).collect();
    assert_eq!(distinct.len(), EventName::ALL.len());
}

#[test]
fn the_optional_forms_round_trip_too() {
    let mut compensation = sample(EventName::TaskQueued);
    compensation.instance = Some(Instance { iteration: 3, item_index: Some(0), compensation: true, fanout: false });
    let mut group = sample(EventName::TaskQueued);
    group.instance = Some(Instance { iteration: 2, item_index: None, compensation: false, fanout: true });
    let mut job = EngineEvent::new(
        EventData::JobStarted(JobStart::New { params: [("day".to_string(), "***".to_string())].into() }),
        0,
    );
    job.job = Some("j".into());
    let events = [
        compensation,
        group,
        job,
        EngineEvent::new(EventData::JobStarted(JobStart::Retry { from: None }), 0),
        EngineEvent::new(EventData::TaskCancelled { from_dead: false }, 0),
        EngineEvent::new(EventData::TaskStarted { priority: 0, pid: None }, 0),
        EngineEvent::new(
            EventData::TaskFailed(AttemptFailure {
                reason: FailReason::ExitCode,
                exit_code: Some(3),
                signal: None,
                detail: None,
            }),
            0,
        ),
    ];
    for e in events {
        assert_eq!(EngineEvent::from_json(&e.to_json()), Some(e.clone()), "{}", e.to_json());
        assert_eq!(e.to_json_text(), crate::json::text(&e.to_json()), "the line is the object's text");
    }
}

/// The journal's, the stream's and `--json`'s line (written without building the object) is the
/// object's text, byte for byte, for every event.
#[test]
fn the_json_line_is_the_json_objects_text() {
    for name in EventName::ALL {
        let e = sample(name);
        assert_eq!(e.to_json_text(), crate::json::text(&e.to_json()), "{name:?}");
        let bare = EngineEvent::new(e.data.clone(), 1_796_000_000_123);
        assert_eq!(bare.to_json_text(), crate::json::text(&bare.to_json()), "{name:?} alone");
    }
}

/// The line writes names as serde_json does — quotes, backslashes, control characters,
/// DEL and non-ASCII — and every kind of instance, with and without an attempt.
#[test]
fn the_json_line_escapes_and_instances_as_the_object_does() {
    let names = ["plain", "q\"uote", "back\\slash", "tab\tnew\nline\u{1}\u{1f}", "del\u{7f}", "ünï \u{2028} 🦀", ""];
    let instances = [
        None,
        Some(Instance::FIRST),
        Some(Instance { iteration: 3, item_index: Some(0), compensation: false, fanout: false }),
        Some(Instance { iteration: 1, item_index: None, compensation: true, fanout: false }),
        Some(Instance { iteration: 2, item_index: Some(7), compensation: false, fanout: true }),
    ];
    for (k, name) in names.iter().enumerate() {
        for (j, instance) in instances.iter().enumerate() {
            let mut e = sample(EventName::ALL[(k * instances.len() + j) % EventName::ALL.len()]);
            e.ts_ms = (k * 1_000_003 + j) as u64;
            e.job = Some(format!("j{name}"));
            e.task = Some(name.to_string());
            e.queue = (j % 2 == 0).then(|| name.to_string());
            e.attempt = (j % 3 != 0).then_some(j as u32);
            e.job_run = (j != 4).then_some(u64::MAX - j as u64);
            e.instance = *instance;
            assert_eq!(e.to_json_text(), crate::json::text(&e.to_json()), "{name:?} {instance:?}");
            let message = EventData::TaskWarning { message: name.to_string() };
            let warning = EngineEvent { data: message, ..e };
            assert_eq!(warning.to_json_text(), crate::json::text(&warning.to_json()), "{name:?}");
        }
    }
}

/// The variants written without a `Value`, in each of their shapes, and times from the epoch
/// to the end of year 9999 (leap days, the ends of centuries, milliseconds), as `to_json` has
/// them (`humantime` writes no later time).
#[test]
fn the_json_line_of_every_shape_and_time_is_the_objects_text() {
    let shapes = [
        EventData::TaskQueued { priority: 0, series_start: None },
        EventData::TaskQueued { priority: 255, series_start: Some(u32::MAX) },
        EventData::TaskStarted { priority: 50, pid: None },
        EventData::TaskStarted { priority: 7, pid: Some(1) },
        EventData::TaskSucceeded { duration_ms: 0, cost_usd_micros: 0, cached_from: None },
        EventData::TaskSucceeded { duration_ms: u64::MAX, cost_usd_micros: 0, cached_from: Some(10) },
        EventData::TaskSucceeded { duration_ms: 3, cost_usd_micros: 1_000_000, cached_from: None },
        EventData::JobStarted(JobStart::New { params: BTreeMap::new() }),
        EventData::JobSucceeded(JobEnd { cost_usd_micros: 0, reason: None }),
    ];
    let day = 86_400_000u64;
    let mut times = vec![0, 1, 999, 1_000, day - 1, day, 1_795_000_000_123, 253_402_300_799_999];
    // 1970 to 2400 in uneven steps: every month of many years, leap days and century ends.
    let mut t = 0u64;
    while t < 13_569_465_600_000 {
        times.push(t);
        t += 45 * day + 3_723_456;
    }
    for (k, data) in shapes.iter().enumerate() {
        for &ts in &times {
            let mut e = task_event(data.clone());
            e.ts_ms = ts;
            if k % 2 == 1 {
                (e.attempt, e.instance, e.queue) = (None, None, None);
            }
            assert_eq!(e.to_json_text(), crate::json::text(&e.to_json()), "{data:?} at {ts}");
        }
    }
}

#[test]
fn lines_that_are_not_gaffer_events_are_refused() {
    let refused = [
        json!({"event": "made.up"}),
        json!({"event": "task.succeeded", "duration_ms": 5}),
        json!({"event": "task.failed", "reason": "not a reason"}),
        json!({"event": "task.queued", "priority": 256}),
        json!({"event": "budget.exceeded", "scope": "queue", "limit_usd": 1, "spent_usd": 2}),
        json!([1, 2]),
    ];
    for v in refused {
        assert_eq!(EngineEvent::from_json(&v), None, "{v}");
    }
}

#[test]
fn task_labels_say_which_run() {
    let mut e = sample(EventName::TaskFailed);
    assert_eq!(e.task_label().as_deref(), Some("fetch"));
    e.instance = Some(Instance { iteration: 2, item_index: Some(3), compensation: false, fanout: false });
    assert_eq!(e.task_label().as_deref(), Some("fetch#2[3]"));
    e.instance = None;
    assert_eq!(e.task_label().as_deref(), Some("fetch"));
}
