//! `GET /metrics`: Prometheus text, computed from a store snapshot at each scrape.

use std::collections::BTreeMap;
use std::fmt::Write;

use actix_web::{HttpResponse, web};

use super::ApiState;
use crate::model::TaskState;
use crate::model::cost::add_by_model;
use crate::store::{StoreError, StoreLocation};

/// Prometheus text (`gaffer_*`), computed from a store snapshot at each scrape.
#[utoipa::path(get, path = "/metrics", tag = "read", responses(
    (status = 200, content_type = "text/plain", body = String), (status = 500, content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let store = state.store.clone();
    match web::block(move || render(&store)).await {
        Ok(Ok(text)) => HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text),
        Ok(Err(e)) => HttpResponse::InternalServerError().body(e.to_string()),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// One pass over the task runs and one over the attempts, each record dropped once counted:
/// a scrape costs the same memory whatever the store holds.
fn render(store: &StoreLocation) -> Result<String, StoreError> {
    let reader = store.snapshot()?;
    let mut out = String::new();
    let mut by_state: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let mut dead = 0u64;
    reader.each_task_run(&mut |t| {
        if !t.is_counted() {
            return true; // a fan-out's group: its items are counted
        }
        dead += u64::from(t.state == TaskState::Dead);
        *by_state.entry((t.queue, t.state.as_str())).or_default() += 1;
        true
    })?;
    header(&mut out, "gaffer_task_runs", "gauge", "Task runs by queue and state.");
    for ((queue, state), n) in &by_state {
        let _ = writeln!(out, "gaffer_task_runs{{queue=\"{}\",state=\"{state}\"}} {n}", label(queue));
    }
    header(&mut out, "gaffer_dead_letters", "gauge", "Task runs waiting in the dead-letter queue.");
    let _ = writeln!(out, "gaffer_dead_letters {dead}");
    let mut failed: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut seconds, mut ended, mut started) = (0.0f64, 0u64, 0u64);
    let mut cost = BTreeMap::new();
    reader.each_attempt(&mut |a| {
        started += 1;
        if let Some(reason) = a.reason {
            *failed.entry(reason.as_str()).or_default() += 1;
        }
        if let Some(end) = a.ended_at_ms {
            seconds += end.saturating_sub(a.started_at_ms) as f64 / 1000.0;
            ended += 1;
        }
        // The same sums as `gaffer cost --by model`.
        add_by_model(&mut cost, &a.by_model);
        true
    })?;
    header(&mut out, "gaffer_attempts_total", "counter", "Attempts started.");
    let _ = writeln!(out, "gaffer_attempts_total {started}");
    header(
        &mut out,
        "gaffer_attempts_failed_total",
        "counter",
        "Failed attempts by reason (each is retried or dead-lettered).",
    );
    for (reason, n) in &failed {
        let _ = writeln!(out, "gaffer_attempts_failed_total{{reason=\"{reason}\"}} {n}");
    }
    header(&mut out, "gaffer_attempt_duration_seconds", "summary", "Duration of ended attempts.");
    let _ = writeln!(
        out,
        "gaffer_attempt_duration_seconds_sum {seconds:.3}\ngaffer_attempt_duration_seconds_count {ended}"
    );
    header(&mut out, "gaffer_cost_usd_total", "counter", "Dollars spent, by model.");
    for (model, usage) in &cost {
        let usd = crate::model::money::format_usd(usage.usd_micros);
        let _ = writeln!(out, "gaffer_cost_usd_total{{model=\"{}\"}} {usd}", label(model));
    }
    header(
        &mut out,
        "gaffer_tokens_total",
        "counter",
        "Tokens, by model and kind (input: billed at the input price; cache_read, cache_write: prompt cache).",
    );
    for (model, u) in &cost {
        for (kind, n) in [
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cache_read", u.cache_read_tokens),
            ("cache_write", u.cache_write_tokens),
        ] {
            let _ = writeln!(out, "gaffer_tokens_total{{model=\"{}\",direction=\"{kind}\"}} {n}", label(model));
        }
    }
    Ok(out)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Prometheus label values escape backslash, quote and newline.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queue names are the user's and model names come from task output: a quote, backslash or
    /// newline in one must not break the line it is on (the exposition format's three escapes).
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("plain-model"), "plain-model");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert!(!label("x\ny\rz").contains('\n'));
    }
}
