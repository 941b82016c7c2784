//! A redb backend that reads a file and keeps every write in memory, in 4 KiB blocks: redb's
//! full integrity check (which ends with a commit) runs over `state.redb` for `gaffer doctor`
//! and the file stays exactly as it was.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use redb::StorageBackend;

/// What the backend methods fail with (redb 4: `std::io::Error`).
type BackendIoError = std::io::Error;

const BLOCK: u64 = 4096;

#[derive(Debug)]
pub struct Overlay {
    file: File,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    len: u64,
    /// Blocks written (or cut by `set_len`), by block number.
    blocks: BTreeMap<u64, Vec<u8>>,
    /// The file's length: blocks past it read as zeros.
    file_len: u64,
}

impl Overlay {
    pub fn new(file: File) -> std::io::Result<Overlay> {
        let len = file.metadata()?.len();
        Ok(Overlay { file, state: Mutex::new(State { len, blocks: BTreeMap::new(), file_len: len }) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// Block `n` as it reads now (written, or from the file, zeros past its end).
    fn block(&self, file: &File, n: u64) -> std::io::Result<Vec<u8>> {
        if let Some(block) = self.blocks.get(&n) {
            return Ok(block.clone());
        }
        let mut block = vec![0u8; BLOCK as usize];
        let start = n * BLOCK;
        if start < self.file_len {
            let end = (start + BLOCK).min(self.file_len);
            file.read_exact_at(&mut block[..(end - start) as usize], start)?;
        }
        Ok(block)
    }
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, BackendIoError> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        let state = self.state();
        if offset + out.len() as u64 > state.len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let block = state.block(&self.file, at / BLOCK)?;
            let from = (at % BLOCK) as usize;
            let n = (BLOCK as usize - from).min(out.len() - done);
            out[done..done + n].copy_from_slice(&block[from..from + n]);
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        let mut state = self.state();
        if len < state.len {
            // What lies past the new end reads as zeros if the file grows again.
            let last = len / BLOCK;
            let mut block = state.block(&self.file, last)?;
            block[(len % BLOCK) as usize..].fill(0);
            state.blocks.insert(last, block);
            let gone: Vec<u64> = state.blocks.range(last + 1..).map(|(n, _)| *n).collect();
            for n in gone {
                state.blocks.remove(&n);
            }
            state.file_len = state.file_len.min(len);
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        let mut state = self.state();
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let n_block = at / BLOCK;
            let mut block = state.block(&self.file, n_block)?;
            let from = (at % BLOCK) as usize;
            let n = (BLOCK as usize - from).min(data.len() - done);
            block[from..from + n].copy_from_slice(&data[done..done + n]);
            state.blocks.insert(n_block, block);
            done += n;
        }
        state.len = state.len.max(offset + data.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_through_and_keeps_writes_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &original).expect("write");
        let overlay = Overlay::new(File::open(&path).expect("open")).expect("overlay");
        overlay.write(4000, &[9; 200]).expect("write");
        overlay.set_len(9000).expect("shrink");
        overlay.set_len(12_000).expect("grow");
        let mut all = vec![0u8; 12_000];
        overlay.read(0, &mut all).expect("read");
        let mut expected = original.clone();
        expected[4000..4200].fill(9);
        expected.resize(9000, 0);
        expected.resize(12_000, 0);
        assert_eq!(all, expected);
        assert_eq!(std::fs::read(&path).expect("file"), original, "the file is untouched");
    }
}
