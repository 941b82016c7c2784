//! One running instance per state dir. redb refuses a second writer too, but a lock file of our
//! own also tells the others *which* process holds it, for messages and `status`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::StoreError;

/// Held for as long as this process is the instance; released by the kernel on any exit, kill -9 included.
pub struct InstanceLock {
    _lock: Flock<File>,
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("instance.lock")
}

impl InstanceLock {
    pub fn acquire(state_dir: &Path) -> Result<InstanceLock, StoreError> {
        let path = lock_path(state_dir);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, _)) => {
                return Err(StoreError::InUse { state_dir: state_dir.to_path_buf(), pid: holder(state_dir) });
            }
        };
        let pid = std::process::id().to_string();
        lock.set_len(0)
            .and_then(|_| lock.seek(SeekFrom::Start(0)))
            .and_then(|_| lock.write_all(pid.as_bytes()))
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(InstanceLock { _lock: lock })
    }
}

/// The pid of the running instance, if one holds the lock.
pub fn holder(state_dir: &Path) -> Option<u32> {
    let path = lock_path(state_dir);
    let file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((mut file, _)) => {
            let mut text = String::new();
            file.read_to_string(&mut text).ok()?;
            text.trim().parse().ok()
        }
    }
}
