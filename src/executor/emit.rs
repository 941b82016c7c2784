//! `gaffer emit …`, run by a task to talk to the gaffer that started it.

use std::io::Write;

use super::protocol::format_emit;

/// Formats one control message from CLI words (validated like the parser would) and writes it
/// to the control fd (`GAFFER_CONTROL_FD`, default 3).
pub fn emit(words: &[String]) -> Result<(), String> {
    let text = format_emit(words)?;
    let fd = control_fd()?;
    write_to_fd(fd, text.as_bytes())
}

fn control_fd() -> Result<u32, String> {
    match std::env::var("GAFFER_CONTROL_FD") {
        Err(_) => Ok(3),
        Ok(v) => v.trim().parse().map_err(|_| format!("GAFFER_CONTROL_FD is not a file descriptor number: `{v}`")),
    }
}

/// Reopens the inherited fd through `/proc/self/fd` rather than wrapping the raw number, which
/// would need `unsafe` (the number is not ours to own or close). For a pipe this is the same
/// pipe; `append` keeps a regular file (`3>>file` in a test) from being overwritten. One
/// `write_all` of a short message is a single atomic pipe write (≤ PIPE_BUF = 4096 bytes), so
/// concurrent emitters sharing the fd do not interleave their lines.
fn write_to_fd(fd: u32, bytes: &[u8]) -> Result<(), String> {
    let path = format!("/proc/self/fd/{fd}");
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("not running under gaffer: control fd {fd} is not open (set by gaffer as GAFFER_CONTROL_FD)")
        } else {
            format!("cannot open gaffer control fd {fd}: {e}")
        }
    })?;
    file.write_all(bytes).map_err(|e| format!("cannot write to gaffer control fd {fd}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_fd_gives_clear_error() {
        let err = write_to_fd(987_654, b"heartbeat\n").expect_err("fd is not open");
        assert!(err.contains("not running under gaffer"), "{err}");
    }

    #[test]
    fn writes_to_an_open_fd() {
        let mut file = tempfile::tempfile().expect("tempfile");
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        let fd = u32::try_from(file.as_raw_fd()).expect("fd");
        write_to_fd(fd, b"heartbeat\n").expect("write");
        file.rewind().expect("rewind");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read");
        assert_eq!(text, "heartbeat\n");
    }
}
