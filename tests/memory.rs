//! What a long-running gaffer must not keep: memory that grows with the events, runs or output
//! it has seen. RSS itself is checked by `scripts/soak-serve.sh` and `scripts/bench.sh`; these
//! tests play the mechanisms through the real binary.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use support::{Project, Server, wait_until};

/// An events (SSE) client that stops reading while the server is busy is dropped after a
/// while: before, every event was queued for it for as long as the connection stayed open.
#[test]
fn an_events_client_that_stops_reading_is_dropped() {
    let lines = 4000; // ~1 MB of events: more than the socket and the server buffer together
    let p = Project::new(&format!(
        "[jobs.chatty.tasks.t]\nrun = 'for i in $(seq {lines}); do echo \"progress step $i, padded so that each event is a few hundred bytes long\" >&3; done'\n"
    ));
    let _server = Server::start(&p);
    // The socket file exists a moment before the server listens on it.
    let mut connected = None;
    wait_until(Duration::from_secs(10), "the socket to accept", || {
        connected = UnixStream::connect(p.state_dir().join("gaffer.sock")).ok();
        connected.is_some()
    });
    let mut events = connected.expect("connected");
    events.write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut head = [0u8; 12];
    events.read_exact(&mut head).expect("response");
    assert_eq!(&head, b"HTTP/1.1 200", "subscribed");
    let submitted = p.run(&["submit", "chatty"]);
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    wait_until(Duration::from_secs(60), "the chatty task to succeed", || {
        p.tasks().iter().any(|t| t["task"] == "t" && t["state"] == "succeeded")
    });
    // The server waits 10 s (`EVENTS_STALL`) for a client that takes nothing; this one starts
    // reading only after that: it gets what was sent before it was dropped, then the end.
    std::thread::sleep(Duration::from_secs(12));
    events.set_read_timeout(Some(Duration::from_secs(40))).expect("timeout");
    let mut received = Vec::new();
    let read = events.read_to_end(&mut received);
    let progress = String::from_utf8_lossy(&received).matches("\"event\":\"task.progress\"").count();
    assert!(read.is_ok(), "the stream of a client that stopped reading never ended: {read:?} ({progress} events)");
    assert!(progress < lines, "it was dropped, not sent all {lines} events ({progress} came)");
}
