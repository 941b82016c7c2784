//! `gaffer serve` numbers for scripts/bench.sh: submits per second through the control socket,
//! and the cron firing delay (scheduled second → `task.started`). Runs the real binary.
//!
//!   cargo bench --bench serve -- [SUBMITS] [CRON_SECONDS]
//!
//! Prints one JSON object on stdout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let submits: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let cron_seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let (sequential, parallel) = submit_rate(submits);
    let (p50, p99, fires) = cron_delay(cron_seconds);
    let out = json!({
        "submits": submits,
        "submits_per_s_1_client": sequential,
        "submits_per_s_4_clients": parallel,
        "cron_fires": fires,
        "cron_delay_p50_ms": p50,
        "cron_delay_p99_ms": p99,
    });
    println!("{out}");
}

fn serve(dir: &Path, workflow: &str) -> Child {
    std::fs::write(dir.join("workflow.toml"), workflow).expect("workflow");
    let child = Command::new(env!("CARGO_BIN_EXE_gaffer"))
        .current_dir(dir)
        .env("GAFFER_STATE_DIR", dir.join(".gaffer"))
        .args(["serve", "workflow.toml", "--headless"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let socket = dir.join(".gaffer/gaffer.sock");
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

fn post(socket: &Path, path: &str, body: &str) -> u16 {
    let mut stream = UnixStream::connect(socket).expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Submits of a one-task job: one client after the other, then four at once.
fn submit_rate(n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), "[settings]\nworkers = 4\n[jobs.j.tasks.t]\nrun = \"true\"\n");
    let socket = dir.path().join(".gaffer/gaffer.sock");
    let body = r#"{"job":"j"}"#;
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(post(&socket, "/v1/submit", body), 200);
    }
    let sequential = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..n / 4 {
                    assert_eq!(post(&socket, "/v1/submit", body), 200);
                }
            });
        }
    });
    let parallel = (n / 4 * 4) as f64 / start.elapsed().as_secs_f64();
    stop(server);
    (sequential, parallel)
}

/// A schedule every second for `seconds`: from each scheduled second to its task's start.
fn cron_delay(seconds: u64) -> (f64, f64, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), "[jobs.tick]\nschedule = \"* * * * * *\"\n[jobs.tick.tasks.t]\nrun = \"true\"\n");
    std::thread::sleep(Duration::from_secs(seconds));
    stop(server);
    let mut fired: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut delays = Vec::new();
    for event in journal(&dir.path().join(".gaffer/events")) {
        let ms = |key: &str| {
            event[key]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
        };
        match event["event"].as_str() {
            Some("job.started") => {}
            Some("schedule.fired") => {
                if let (Some(slot), Some(run)) = (ms("scheduled_for"), event["job_run"].as_u64()) {
                    fired.insert(run, slot);
                }
            }
            Some("task.started") => {
                if let (Some(slot), Some(started)) = (event["job_run"].as_u64().and_then(|r| fired.get(&r)), ms("ts")) {
                    delays.push(started.saturating_sub(*slot) as f64);
                }
            }
            _ => {}
        }
    }
    delays.sort_by(f64::total_cmp);
    let pick = |q: f64| delays.get(((delays.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    (pick(0.5), pick(0.99), delays.len())
}

fn journal(dir: &Path) -> Vec<Value> {
    let mut files: Vec<_> =
        std::fs::read_dir(dir).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<Value>>()
        })
        .collect()
}
