//! The attempt's log: stdout and stderr as-is, interleaved in arrival order, capped by keeping
//! the head on disk and only a rolling tail in memory, so a runaway task costs at most
//! `cap` bytes of disk and `cap / 2` bytes of memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use crate::state_dir::{Access, open_under};

/// Buffered bytes are written out once there are this many (or at `flush`).
const WRITE_BATCH: usize = 64 * 1024;

pub struct CappedLog {
    file: File,
    /// Head bytes not yet written. Grows only with what the task printed since the last flush
    /// and is freed by it, so a quiet attempt holds no buffer (a `BufWriter` would hold its
    /// whole capacity for as long as the attempt runs).
    pending: Vec<u8>,
    half: u64,
    head_written: u64,
    head_ends_with_newline: bool,
    tail: VecDeque<u8>,
    omitted: u64,
}

impl CappedLog {
    /// Creates the file (0600; one that exists is replaced, a link is never followed) and its
    /// parent folders (0700) at `path`, which must be under `state_dir`.
    pub fn create(state_dir: &Path, path: &Path, cap_bytes: u64) -> io::Result<Self> {
        let file = open_under(state_dir, path, Access::Replace)?;
        Ok(Self {
            file,
            pending: Vec::new(),
            half: cap_bytes / 2,
            head_written: 0,
            head_ends_with_newline: true,
            tail: VecDeque::new(),
            omitted: 0,
        })
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let room = usize::try_from(self.half - self.head_written).unwrap_or(usize::MAX);
        if room > 0 {
            let (head, rest) = bytes.split_at(room.min(bytes.len()));
            self.pending.extend_from_slice(head);
            self.head_written += head.len() as u64;
            if let Some(&last) = head.last() {
                self.head_ends_with_newline = last == b'\n';
            }
            bytes = rest;
        }
        self.push_tail(bytes);
        if self.pending.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Keeps the last `half` bytes seen past the head; everything pushed out is only counted.
    fn push_tail(&mut self, bytes: &[u8]) {
        let half = usize::try_from(self.half).unwrap_or(usize::MAX);
        if bytes.len() >= half {
            self.omitted += (self.tail.len() + bytes.len() - half) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - half..]);
            return;
        }
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(half);
        if excess > 0 {
            self.tail.drain(..excess);
            self.omitted += excess as u64;
        }
    }

    /// Makes what was written so far visible to readers of the file (the TUI tails it).
    pub fn flush(&mut self) -> io::Result<()> {
        // Taken even when the write fails: a full disk must not make the buffer grow.
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() { Ok(()) } else { self.file.write_all(&pending) }
    }

    /// Writes the omission marker (if any) and the tail, then flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        self.flush()?;
        if self.omitted > 0 {
            let newline = if self.head_ends_with_newline { "" } else { "\n" };
            writeln!(self.file, "{newline}… [gaffer: {} bytes omitted] …", self.omitted)?;
        }
        let (a, b) = self.tail.as_slices();
        self.file.write_all(a)?;
        self.file.write_all(b)?;
        self.tail = VecDeque::new();
        self.omitted = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(cap: u64, chunks: &[&[u8]]) -> String {
        let dir = crate::state_dir::private_tempdir();
        let path = dir.path().join("sub/dir/a.log");
        let mut log = CappedLog::create(dir.path(), &path, cap).expect("create");
        for c in chunks {
            log.write(c).expect("write");
        }
        log.finish().expect("finish");
        std::fs::read_to_string(&path).expect("read")
    }

    #[test]
    fn under_cap_is_verbatim() {
        assert_eq!(log_with(100, &[b"a\n", b"b\n"]), "a\nb\n");
    }

    #[test]
    fn holds_no_buffer_while_quiet() {
        let dir = crate::state_dir::private_tempdir();
        let path = dir.path().join("a.log");
        let mut log = CappedLog::create(dir.path(), &path, 1000).expect("create");
        assert_eq!(log.pending.capacity(), 0, "nothing printed, nothing held");
        log.write(b"hello\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "", "buffered until the flush");
        log.flush().expect("flush");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "hello\n");
        assert_eq!(log.pending.capacity(), 0, "the buffer goes with the flush");
    }

    #[test]
    fn keeps_head_and_tail() {
        let text = log_with(10, &[b"0123456789", b"abcdefghij"]);
        assert_eq!(text, "01234\n… [gaffer: 10 bytes omitted] …\nfghij");
        let text = log_with(10, &[b"0123\n", b"x", b"y", b"z", b"w", b"v", b"u", b"t"]);
        assert_eq!(text, "0123\n… [gaffer: 2 bytes omitted] …\nzwvut");
    }
}
