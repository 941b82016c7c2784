//! One running instance per state dir. redb refuses a second writer too, but a lock file of our
//! own also tells the others *which* process holds it, for messages and `status`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::StoreError;
use crate::state_dir::{Access, StateDir};

const LOCK_FILE: &str = "instance.lock";

/// Held for as long as this process is the instance; released by the kernel on any exit, kill -9 included.
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    pub fn acquire(dir: &StateDir) -> Result<InstanceLock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = dir.open_file(LOCK_FILE, Access::ReadWriteCreate).map_err(StoreError::file)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, _)) => {
                return Err(StoreError::InUse { state_dir: dir.path().to_path_buf(), pid: holder_in(dir) });
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
    holder_in(&StateDir::open(state_dir).ok()?)
}

pub(super) fn holder_in(dir: &StateDir) -> Option<u32> {
    let file = dir.open_file(LOCK_FILE, Access::Read).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((mut file, _)) => {
            let mut text = String::new();
            file.read_to_string(&mut text).ok()?;
            text.trim().parse().ok()
        }
    }
}
