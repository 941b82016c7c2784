//! The control API against a hostile local user (issue 9): floods of idle connections, clients
//! that never speak, refused clients that would keep their connection. The server runs with a
//! lowered open-file limit, as on a shared box, so that exhaustion shows.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The server's `ulimit -n` in these tests (soft and hard).
const FD_LIMIT: usize = 256;
/// Connections each API listener serves at once (`api::MAX_CONNECTIONS`).
const MAX_CONNECTIONS: usize = 64;
/// `api::REQUEST_HEAD_TIMEOUT`, and the slack a loaded machine needs on top.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(3);

/// `gaffer serve --listen ADDR` under `ulimit -n FD_LIMIT`.
fn serve_limited(p: &Project, addr: &str) -> Server {
    let gaffer = env!("CARGO_BIN_EXE_gaffer");
    let script = format!("ulimit -n {FD_LIMIT} && exec \"$@\"");
    let server = Server::spawn(
        Command::new("sh")
            .args(["-c", &script, "sh", gaffer, "serve", "workflow.toml", "--headless", "--listen", addr])
            .current_dir(p.path())
            .env("GAFFER_STATE_DIR", p.state_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let token = p.state_dir().join("token");
    wait_until(Duration::from_secs(10), "the token file", || {
        std::fs::read_to_string(&token).is_ok_and(|t| t.len() > 60)
    });
    wait_until(Duration::from_secs(10), "the listener", || std::net::TcpStream::connect(addr).is_ok());
    server
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    format!("127.0.0.1:{port}")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// This test process holds a thousand sockets: lift its own soft limit to the hard one.
fn raise_own_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// True once the server has closed this connection (a 408 and EOF, or a reset).
fn closed_by_server(mut stream: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Opens up to `n` connections at once; those the kernel took within 3 s, as non-blocking
/// std streams that never send a byte.
fn flood(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let streams = runtime.block_on(async {
        let connect = || tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr));
        futures_util::future::join_all((0..n).map(|_| connect())).await
    });
    streams.into_iter().filter_map(|r| r.ok()?.ok()?.into_std().ok()).collect()
}

/// Issue 9 item 3: ~1,000 idle connections to `--listen` (no token needed to open them) under a
/// low open-file limit made task spawns fail with EMFILE and dead-letter. Now each listener
/// serves at most `MAX_CONNECTIONS` at once and closes a silent one after the head timeout.
#[test]
fn a_thousand_idle_tcp_connections_neither_exhaust_descriptors_nor_fail_tasks() {
    raise_own_fd_limit();
    let mut workflow = String::from("[settings]\nworkers = 8\n");
    for i in 0..30 {
        workflow.push_str(&format!("[jobs.j.tasks.t{i}]\nrun = 'sleep 0.2'\n"));
    }
    let p = Project::new(&workflow);
    let addr = free_addr();
    let server = serve_limited(&p, &addr);
    let pid = server.child.id();
    let idle_fds = open_fds(pid);

    let started = Instant::now();
    let connections = flood(&addr, 1000);
    assert!(connections.len() > 2 * MAX_CONNECTIONS, "the flood reached the server: {}", connections.len());
    let submitted = p.run(&["submit", "j"]);
    assert!(submitted.status.success(), "the socket still answers: {}", String::from_utf8_lossy(&submitted.stderr));

    let mut most_fds = open_fds(pid);
    wait_until(Duration::from_secs(60), "the job run to end", || {
        most_fds = most_fds.max(open_fds(pid));
        let jobs = p.json(&["jobs", "--json"]);
        jobs[0]["state"] != "running"
    });
    eprintln!("{} connections held; descriptors: {idle_fds} idle, {most_fds} at most", connections.len());
    let tasks = p.tasks();
    assert_eq!(tasks.len(), 30);
    for t in &tasks {
        assert_eq!(t["state"], "succeeded", "{t}");
        assert_eq!(t["attempt"], 1, "no attempt failed: {t}");
    }
    // Idle: the engine, the store, the listeners. Flooded: at most MAX_CONNECTIONS more, plus
    // the pipes, pidfds and logs of 8 running tasks.
    assert!(
        most_fds <= idle_fds + MAX_CONNECTIONS + 8 * 8 && most_fds < FD_LIMIT,
        "the server held {most_fds} descriptors (idle: {idle_fds}, limit {FD_LIMIT})"
    );
    let first_batch = Duration::from_secs(3) + HEAD_TIMEOUT + SLACK;
    wait_until(first_batch.saturating_sub(started.elapsed()), "the server to close silent connections", || {
        connections.iter().filter(|c| closed_by_server(c)).count() >= MAX_CONNECTIONS
    });

    // Once the flood is gone, a client with the token is served again.
    drop(connections);
    let token = std::fs::read_to_string(p.state_dir().join("token")).expect("token").trim().to_string();
    wait_until(Duration::from_secs(20), "an answer over TCP after the flood", || {
        http_get(&addr, &format!("Authorization: Bearer {token}\r\n")).starts_with("HTTP/1.1 200")
    });
}

/// `GET /v1/status` over TCP with `headers`; the whole answer, or "" if none came in 5 s.
fn http_get(addr: &str, headers: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return String::new() };
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let request = format!("GET /v1/status HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// A connection that never sends its request is closed after the head timeout, on the TCP
/// listener and on the unix socket alike; a refused client's connection is closed at once
/// (no keep-alive to try tokens on).
#[test]
fn silent_and_refused_connections_are_closed_on_both_listeners() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let addr = free_addr();
    let _server = serve_limited(&p, &addr);
    let limit = HEAD_TIMEOUT + SLACK;

    let mut tcp = std::net::TcpStream::connect(&addr).expect("connect");
    tcp.set_read_timeout(Some(limit)).expect("timeout");
    let mut unix = std::os::unix::net::UnixStream::connect(p.state_dir().join("gaffer.sock")).expect("connect");
    unix.set_read_timeout(Some(limit)).expect("timeout");
    let start = Instant::now();
    for (name, stream) in [("tcp", &mut tcp as &mut dyn Read), ("unix", &mut unix as &mut dyn Read)] {
        let mut answer = String::new();
        let read = stream.read_to_string(&mut answer);
        assert!(read.is_ok(), "{name}: the server closed the silent connection: {read:?}");
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{name}: {answer}");
    }
    assert!(start.elapsed() < limit, "closed within the head timeout");

    // Keep-alive asked for, refused anyway: the answer says close, and the server closes.
    let answer = http_get(&addr, "Authorization: Bearer wrong\r\nConnection: keep-alive\r\n");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
}

/// Issue 9 item 8: with `instance.lock` deleted under a running instance, `status` said "not
/// running". The instance answers on its socket and knows its own pid.
#[test]
fn status_asks_the_socket_when_the_lock_file_is_gone() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'true'\n");
    let server = Server::start(&p);
    std::fs::remove_file(p.state_dir().join("instance.lock")).expect("delete the lock file");
    let status = p.json(&["status", "--json"]);
    assert_eq!(status["instance"]["running"], true, "{status}");
    assert_eq!(status["instance"]["pid"], server.child.id(), "{status}");
    let human = p.run(&["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains(&format!("instance: running (pid {})", server.child.id())), "{text}");
}
