//! Line reading with a hard bound: a task printing megabytes without a newline must not grow
//! gaffer's memory, so a long run is handed out in `max`-byte chunks.
//!
//! Memory follows the data, not the number of pipes: bytes are read only once the pipe is
//! readable, into a buffer that is freed as soon as everything in it was handed out. A task
//! that prints nothing (or waits between lines) costs no buffer; with hundreds of attempts
//! running that is most of them (a `BufReader` holds its whole capacity per pipe).

use std::io;

use tokio::net::unix::pipe;

/// Most bytes taken from the pipe per read.
const READ_SIZE: usize = 16 * 1024;

pub struct ChunkReader {
    pipe: pipe::Receiver,
    /// Bytes read but not yet handed out start at `start`.
    pending: Vec<u8>,
    start: usize,
}

impl ChunkReader {
    pub fn new(pipe: pipe::Receiver) -> Self {
        Self { pipe, pending: Vec::new(), start: 0 }
    }

    /// Returns the next line including its `\n`, or up to `max` bytes of a longer line (no `\n`
    /// at the end then), or the last bytes before EOF. `None` at EOF.
    pub async fn next_chunk(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(chunk) = self.take(max, false) {
                return Ok(Some(chunk));
            }
            if !self.fill().await? {
                return Ok(self.take(max, true));
            }
        }
    }

    /// The next chunk among the bytes already read, if they hold a whole one (or, at `eof`,
    /// whatever is left).
    fn take(&mut self, max: usize, eof: bool) -> Option<Vec<u8>> {
        let unread = &self.pending[self.start..];
        let window = &unread[..unread.len().min(max)];
        let len = match window.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if window.len() == max || (eof && !window.is_empty()) => window.len(),
            None => return None,
        };
        let chunk = window[..len].to_vec();
        self.start += len;
        if self.start == self.pending.len() {
            self.pending = Vec::new();
            self.start = 0;
        }
        Some(chunk)
    }

    /// Waits for the pipe, then appends what it has (up to `READ_SIZE`). False at EOF.
    async fn fill(&mut self) -> io::Result<bool> {
        self.pending.drain(..self.start);
        self.start = 0;
        loop {
            self.pipe.readable().await?;
            self.pending.reserve(READ_SIZE);
            match self.pipe.try_read_buf(&mut self.pending) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.pending.is_empty() {
                        self.pending = Vec::new();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Writes `pieces` into a real pipe with pauses between them (so lines arrive split across
    /// reads), closes it, and collects the chunks.
    async fn chunks_of(pieces: &[&'static [u8]], max: usize) -> Vec<Vec<u8>> {
        let (mut tx, rx) = pipe::pipe().expect("pipe");
        let pieces = pieces.to_vec();
        let writer = tokio::spawn(async move {
            for piece in pieces {
                tx.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut reader = ChunkReader::new(rx);
        let mut chunks = Vec::new();
        while let Some(c) = reader.next_chunk(max).await.expect("read") {
            chunks.push(c);
        }
        writer.await.expect("writer");
        chunks
    }

    #[tokio::test]
    async fn splits_lines_and_long_runs() {
        let want: Vec<&[u8]> = vec![b"ab\n", b"cdef", b"ghij", b"\n", b"\n", b"xy"];
        assert_eq!(chunks_of(&[b"ab\ncdefghij\n\nxy"], 4).await, want);
        assert_eq!(chunks_of(&[b"a", b"b\ncd", b"efg", b"hij\n", b"\nx", b"y"], 4).await, want);
    }

    #[tokio::test]
    async fn holds_no_buffer_between_lines() {
        let (mut tx, rx) = pipe::pipe().expect("pipe");
        let mut reader = ChunkReader::new(rx);
        tx.write_all(b"one\ntwo\n").await.expect("write");
        assert_eq!(reader.next_chunk(64).await.expect("read"), Some(b"one\n".to_vec()));
        assert!(reader.pending.capacity() > 0, "the second line is still held");
        assert_eq!(reader.next_chunk(64).await.expect("read"), Some(b"two\n".to_vec()));
        assert_eq!(reader.pending.capacity(), 0, "everything handed out: the buffer is freed");
        tx.write_all(b"par").await.expect("write");
        drop(tx);
        assert_eq!(reader.next_chunk(64).await.expect("read"), Some(b"par".to_vec()));
        assert_eq!(reader.next_chunk(64).await.expect("read"), None);
    }
}
