//! Enqueue → start latency on an idle engine, through the library's public API.
//!
//! For each executor (no-op, then local `true`), one engine on a fresh temp state dir: submit a
//! one-task job, time from just before `submit` to the moment this process receives that task
//! run's `task.started` event, wait for the job run to end, sleep a few ms, repeat.
//!
//!   cargo bench --bench latency                 # 200 samples per executor, 2–7 ms gaps
//!   SAMPLES=500 GAP_MS=5 cargo bench --bench latency
//!   STORE=postgres://postgres@127.0.0.1:54331/gaffer cargo bench --bench latency
//!
//! With `STORE` (a PostgreSQL URL, as `--store`) the engine is a one-node cluster on that
//! database. An idle node starts the task run with the submit's commit (`running` on this
//! node: `model::start_at_submit`); with `START_AT_SUBMIT=0` the queued row is the enqueue, the
//! node's listener (LISTEN/NOTIFY) wakes its Dispatcher, which claims from the database — the
//! path of work queued by another node (scripts/bench.sh's cluster section measures both).
//!
//! Prints a human table and one `RESULT key=value ...` line per executor for scripts/bench.sh.
//! Under `cargo test --benches` (no `--bench` argument) it runs 3 samples as a smoke test.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gaffer::config;
use gaffer::engine::{self, EngineConfig, SystemClock};
use gaffer::executor::{Executor, LocalExecutor, NoopExecutor};
use gaffer::model::cost::Pricing;
use gaffer::store;

const WORKFLOW: &str = r#"[settings]
workers = 4

[jobs.one.tasks.t]
run = "true"
"#;

struct Sample {
    /// submit() called → task.started received.
    started: Duration,
    /// submit() called → submit() returned (the job run and its task run are committed).
    submitted: Duration,
}

struct Outcome {
    samples: Vec<Sample>,
    commits: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let samples = if benching { env_u64("SAMPLES", 200) } else { 3 };
    let gap_ms = env_u64("GAP_MS", 2);
    let jitter_ms = env_u64("JITTER_MS", 5);
    let only = std::env::var("EXECUTORS").unwrap_or_else(|_| "noop,local".into());
    println!("enqueue→start latency, idle engine, {samples} samples per executor, gap {gap_ms}+U(0,{jitter_ms}) ms");
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>14} {:>14} {:>15}",
        "executor", "p50 µs", "p90 µs", "p99 µs", "max µs", "submit p50 µs", "submit p99 µs", "commits/sample"
    );
    for name in only.split(',') {
        let executor: Arc<dyn Executor> = match name {
            "noop" => Arc::new(NoopExecutor),
            "local" => Arc::new(LocalExecutor),
            other => panic!("unknown executor `{other}` (noop, local)"),
        };
        let outcome = measure(executor, samples, gap_ms, jitter_ms);
        report(name, &outcome);
    }
}

fn measure(executor: Arc<dyn Executor>, samples: u64, gap_ms: u64, jitter_ms: u64) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("latency.toml");
    std::fs::write(&file, WORKFLOW).expect("write workflow");
    let workflow = config::parse(&file, WORKFLOW).expect("valid workflow");
    let state_dir = dir.path().join("state");
    let location = store::StoreLocation::choose(std::env::var("STORE").ok().as_deref(), &state_dir).expect("STORE");
    let facts = engine::cluster::queue_facts(&workflow);
    let opened = store::open_store(&location, &state_dir, facts).expect("open the store");
    let counter = opened.store.clone();
    // START_AT_SUBMIT=0: every task run is queued, then claimed (the LISTEN/NOTIFY path), even
    // where the idle node could start it with the submit's commit.
    let start_at_submit = std::env::var("START_AT_SUBMIT").map_or(true, |v| v != "0");
    let cluster = opened.postgres.clone().map(|backend| engine::cluster::ClusterConfig {
        start_at_submit,
        ..engine::cluster::ClusterConfig::new(backend)
    });
    let pricing = Pricing::new(config::pricing::builtin(), &workflow.pricing);
    let config = EngineConfig {
        workflow: Arc::new(workflow),
        source: WORKFLOW.to_string(),
        state_dir: std::path::absolute(Path::new(&state_dir)).expect("absolute path"),
        store: opened.store.clone(),
        location,
        executor,
        clock: Arc::new(SystemClock),
        workers: 4,
        pricing,
        labels: Vec::new(),
        cluster,
    };
    let system = actix::System::new();
    let (samples, commits) = system.block_on(async move {
        let handle = engine::start(config);
        let mut events = handle.subscribe().await.expect("subscribe");
        let mut out = Vec::new();
        // One warm-up run, not counted: first-use costs (page cache, thread start-up).
        let mut commits_before = 0;
        for n in 0..=samples {
            let gap = gap_ms + if jitter_ms > 0 { fastrand::u64(0..=jitter_ms) } else { 0 };
            tokio::time::sleep(Duration::from_millis(gap)).await;
            if n == 1 {
                commits_before = counter.commit_count();
            }
            let t0 = Instant::now();
            let id = handle.submit("one", BTreeMap::new()).await.expect("submit");
            let submitted = t0.elapsed();
            let mut started = None;
            loop {
                let event = events.recv().await.expect("event stream open");
                if event.job_run != Some(id) {
                    continue;
                }
                match event.name().as_str() {
                    "task.started" => started = Some(t0.elapsed()),
                    "job.succeeded" => break,
                    "job.failed" | "job.cancelled" => panic!("job run {id} ended with {}", event.name()),
                    _ => {}
                }
            }
            if n > 0 {
                out.push(Sample { started: started.expect("task.started before job.succeeded"), submitted });
            }
        }
        let commits = counter.commit_count() - commits_before;
        handle.shutdown().await;
        drop(handle);
        (out, commits)
    });
    drop(system);
    opened.close(Duration::from_secs(5));
    Outcome { samples, commits }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(name: &str, outcome: &Outcome) {
    let mut started: Vec<Duration> = outcome.samples.iter().map(|s| s.started).collect();
    let mut submitted: Vec<Duration> = outcome.samples.iter().map(|s| s.submitted).collect();
    started.sort();
    submitted.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let label = match name {
        "noop" => "noop (no process)",
        _ => "local (`true` via sh -c)",
    };
    let per_sample = outcome.commits as f64 / outcome.samples.len() as f64;
    let (p50, p90, p99, max) = (
        percentile(&started, 50.0),
        percentile(&started, 90.0),
        percentile(&started, 99.0),
        percentile(&started, 100.0),
    );
    let (sub50, sub99) = (percentile(&submitted, 50.0), percentile(&submitted, 99.0));
    println!(
        "{label:<24} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>14.0} {:>14.0} {:>15.1}",
        us(p50),
        us(p90),
        us(p99),
        us(max),
        us(sub50),
        us(sub99),
        per_sample
    );
    println!(
        "RESULT executor={name} samples={} p50_us={:.0} p90_us={:.0} p99_us={:.0} max_us={:.0} submit_p50_us={:.0} submit_p99_us={:.0} commits_per_sample={per_sample:.1}",
        started.len(),
        us(p50),
        us(p90),
        us(p99),
        us(max),
        us(sub50),
        us(sub99)
    );
}
