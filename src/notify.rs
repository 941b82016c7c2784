//! systemd's notify protocol, without libsystemd: one datagram per state to `$NOTIFY_SOCKET`.
//! Under `Type=notify` gaffer says `READY=1` once it serves, `STOPPING=1` when a graceful stop
//! begins, and — with `WatchdogSec=` — `WATCHDOG=1` only while the engine answers a round trip
//! through its actors, so a wedged engine stops pinging and systemd restarts it.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// `None` when gaffer was not started by systemd with `Type=notify` (no `$NOTIFY_SOCKET`).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let to = address(path.to_str()?).ok()?;
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, to })
    }

    /// Sends one state (`READY=1`, `STATUS=…`); a lost datagram is not worth failing for.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            tracing::warn!("sd_notify {state}: {e}");
        }
    }

    /// How often to ping: half of `$WATCHDOG_USEC`, if the watchdog is meant for this process.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid == std::process::id().to_string());
        (for_us && usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

/// A path, or `@name` for Linux's abstract namespace.
fn address(text: &str) -> std::io::Result<SocketAddr> {
    match text.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let name = format!("@gaffer-notify-test-{}", std::process::id());
        let abstract_listener = UnixDatagram::bind_addr(&address(&name).expect("address")).expect("bind abstract");
        for (to, listener) in [(path.to_str().expect("utf-8").to_string(), &listener), (name, &abstract_listener)] {
            let notifier =
                Notifier { socket: UnixDatagram::unbound().expect("socket"), to: address(&to).expect("address") };
            notifier.send("READY=1");
            let mut buf = [0u8; 64];
            let n = listener.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..n], b"READY=1");
        }
    }
}
