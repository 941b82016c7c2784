//! The state dir is the one place on disk gaffer trusts: whoever can write in it can make gaffer
//! run commands as its owner (a planted `token`, a workflow in `state.redb`) or overwrite any of
//! the owner's files (a planted symlink under `logs/`). So, as OpenSSH and PostgreSQL do with
//! their directories, gaffer uses a state dir only when it belongs to the current user and
//! nobody else may read or write it, and it never follows a symbolic link inside it.
//!
//! - [`StateDir::open_checked`] (every command that uses the state dir) refuses a dir that is
//!   not the user's own, not 0700, or holds a known entry that is a link, someone else's, or
//!   readable or writable by others — with the exact command that fixes each problem.
//! - Every file under it is opened through [`StateDir`]: relative to the dir's descriptor, one
//!   component at a time with `O_NOFOLLOW`, each one checked to be the user's own; what gaffer
//!   creates is 0700 (folders) or 0600 (files) whatever the umask.
//!
//! Architecture Invariant: nothing opens, creates or removes a path under the state dir except
//! through this module (the socket is bound by path, in a dir this module checked).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, fchmod, fchmodat, fstat, fstatat, mkdirat};
use nix::unistd::{Uid, UnlinkatFlags, unlinkat};

/// Entries of the state dir checked at every open: (name, is a folder).
const KNOWN: [(&str, bool); 10] = [
    ("state.redb", false),
    // Prices decide budgets: a planted table could let spending through.
    ("pricing.toml", false),
    ("instance.lock", false),
    ("token", false),
    ("gaffer.sock", false),
    ("gaffer.log", false),
    ("gaffer-tui.log", false),
    ("logs", true),
    ("events", true),
    ("inbox", true),
];

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Why a state dir is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateDirError {
    #[error("no state dir at {}: nothing has run here yet", .0.display())]
    Missing(PathBuf),
    #[error("{}", unsafe_text(.dir, .problems))]
    Unsafe { dir: PathBuf, problems: Vec<Problem> },
    #[error("{}: {reason}", path.display())]
    Io {
        path: PathBuf,
        reason: String,
        /// The OS error behind it, kept so callers can tell a transient one (out of
        /// descriptors) from a lasting one.
        errno: Option<i32>,
    },
}

impl StateDirError {
    /// As an `io::Error` that keeps the OS error behind it (see [`OsErrorAt`]).
    pub fn into_io(self) -> io::Error {
        match self {
            StateDirError::Io { errno: Some(errno), .. } => {
                let source = io::Error::from_raw_os_error(errno);
                io::Error::new(source.kind(), OsErrorAt { text: self.to_string(), source })
            }
            other => io::Error::other(other),
        }
    }
}

/// An OS error with the path it happened on in its message, and the original as its source, so
/// that `resources::is_exhaustion` still sees `EMFILE` behind "…/.gaffer: Too many open files".
#[derive(Debug)]
pub struct OsErrorAt {
    text: String,
    source: io::Error,
}

impl std::fmt::Display for OsErrorAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for OsErrorAt {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// One thing wrong with the state dir, and the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Only too open (the user's own, readable or writable by others): `chmod` fixes it.
    pub open: bool,
    pub path: PathBuf,
    pub what: String,
    pub fix: String,
}

fn unsafe_text(dir: &Path, problems: &[Problem]) -> String {
    let mut text = format!("state dir {} is not safe to use, so gaffer does not use it:", dir.display());
    for p in problems {
        text.push_str(&format!("\n  {}: {}; fix: {}", p.path.display(), p.what, p.fix));
    }
    if problems.len() > 1 && problems.iter().all(|p| p.open) {
        text.push_str(&format!("\n  or all at once: chmod -R go-rwx {}", quote(dir)));
    }
    text
}

/// What [`StateDir::audit`] found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Entries looked at.
    pub entries: usize,
    pub problems: Vec<Problem>,
    /// The user's own entries that others may read or write.
    pub loose: Vec<PathBuf>,
}

/// How [`StateDir::open_file`] opens the last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// An existing file, read only.
    Read,
    /// An existing file, read and write.
    ReadWrite,
    /// Read and write, created (0600) if missing, never truncated.
    ReadWriteCreate,
    /// Appended to (and readable), created (0600) if missing.
    Append,
    /// A new empty file (0600): an existing entry of that name is unlinked first (a link is
    /// removed, not followed), and the file is created exclusively.
    Replace,
    /// A new file (0600) that must not exist yet.
    CreateNew,
}

/// An open, checked state dir. Paths given to its methods are relative to it.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl StateDir {
    /// Creates the state dir (0700, whatever the umask) if it does not exist, then opens and
    /// checks it: what `run` and `serve` use.
    pub fn create_checked(path: &Path) -> Result<StateDir, StateDirError> {
        create_private_dir(path)?;
        StateDir::open_checked(path)
    }

    /// Opens an existing state dir and checks it and its known entries (see the module doc).
    pub fn open_checked(path: &Path) -> Result<StateDir, StateDirError> {
        let (dir, problems) = StateDir::inspect(path)?;
        dir.refuse_if(problems)
    }

    /// The state dir and what [`StateDir::open_checked`] would refuse it for (`gaffer doctor`).
    pub fn inspect(path: &Path) -> Result<(StateDir, Vec<Problem>), StateDirError> {
        let dir = StateDir::open_unchecked(path)?;
        let mut problems = dir.root_problems()?;
        problems.extend(dir.entry_problems()?);
        Ok((dir, problems))
    }

    /// Everything under the state dir, however deep: links and entries of other users are
    /// problems; the user's own entries that others may read or write are `loose` (harmless
    /// while the dir itself is private, as an older gaffer left its logs).
    pub fn audit(&self) -> io::Result<Audit> {
        let mut audit = Audit::default();
        self.audit_dir(self.fd.try_clone()?, Path::new(""), &mut audit)?;
        Ok(audit)
    }

    fn audit_dir(&self, dir: OwnedFd, rel: &Path, audit: &mut Audit) -> io::Result<()> {
        let names = entries(dir.try_clone()?).map_err(|e| self.error(rel, e))?;
        for name in names {
            let name = OsStr::from_bytes(&name);
            let child = rel.join(name);
            let path = self.path.join(&child);
            audit.entries += 1;
            let stat =
                fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| self.error(&child, e))?;
            let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
            if kind == SFlag::S_IFLNK {
                let what = "is a symbolic link; gaffer never follows links in its state dir".to_string();
                audit.problems.push(Problem { open: false, fix: format!("rm {}", quote(&path)), path, what });
                continue;
            }
            match problem_with(&path, &stat, kind == SFlag::S_IFDIR) {
                Some(p) if p.open => audit.loose.push(path),
                Some(p) => audit.problems.push(p),
                None => {}
            }
            if kind == SFlag::S_IFDIR && stat.st_uid == Uid::effective().as_raw() {
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let sub = openat(&dir, name, flags, Mode::empty()).map_err(|e| self.error(&child, e))?;
                self.audit_dir(sub, &child, audit)?;
            }
        }
        Ok(())
    }

    /// Opens an existing state dir and checks the dir itself only: for the files opened while a
    /// command runs, after [`StateDir::open_checked`] passed at its start.
    pub fn open(path: &Path) -> Result<StateDir, StateDirError> {
        let dir = StateDir::open_unchecked(path)?;
        let problems = dir.root_problems()?;
        dir.refuse_if(problems)
    }

    fn refuse_if(self, problems: Vec<Problem>) -> Result<StateDir, StateDirError> {
        if problems.is_empty() { Ok(self) } else { Err(StateDirError::Unsafe { dir: self.path, problems }) }
    }

    fn open_unchecked(path: &Path) -> Result<StateDir, StateDirError> {
        // The state dir's own path is the user's choice and may go through links; what it
        // names is checked below, and everything under it is opened relative to this fd.
        let fd = match nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(StateDirError::Missing(path.to_path_buf())),
            Err(Errno::ENOTDIR) => return Err(io_error(path, "not a directory")),
            Err(e) => return Err(os_error(path, &io::Error::from(e))),
        };
        Ok(StateDir { path: path.to_path_buf(), fd })
    }

    /// Makes the dir's entries (a rename, a new file) durable.
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(&self.fd).map_err(io::Error::from)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` under the state dir, for messages and for what must go by path (the socket).
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    fn root_problems(&self) -> Result<Vec<Problem>, StateDirError> {
        let stat = fstat(&self.fd).map_err(|e| os_error(&self.path, &io::Error::from(e)))?;
        Ok(problem_with(&self.path, &stat, true).into_iter().collect())
    }

    fn entry_problems(&self) -> Result<Vec<Problem>, StateDirError> {
        let mut problems = Vec::new();
        for (name, is_dir) in KNOWN {
            let path = self.path.join(name);
            let stat = match fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(os_error(&path, &io::Error::from(e))),
            };
            let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
            let expected = match (is_dir, name) {
                (true, _) => SFlag::S_IFDIR,
                (false, "gaffer.sock") => SFlag::S_IFSOCK,
                (false, _) => SFlag::S_IFREG,
            };
            if kind == SFlag::S_IFLNK {
                problems.push(Problem {
                    open: false,
                    path: path.clone(),
                    what: "is a symbolic link; gaffer never follows links in its state dir".into(),
                    fix: format!("rm {}", quote(&path)),
                });
            } else if kind != expected {
                problems.push(Problem {
                    open: false,
                    path: path.clone(),
                    what: format!("is not a {}", if is_dir { "directory" } else { "regular file" }),
                    fix: format!("move it away: mv {} {}.old", quote(&path), quote(&path)),
                });
            } else if let Some(problem) = problem_with(&path, &stat, is_dir) {
                if problem.open && name == "gaffer.sock" {
                    // Our own socket, loose because an older gaffer was killed between its bind
                    // and its chmod: made private on the spot (it is replaced at start anyway).
                    let private = Mode::from_bits_truncate(FILE_MODE);
                    fchmodat(&self.fd, name, private, FchmodatFlags::FollowSymlink)
                        .map_err(|e| os_error(&path, &io::Error::from(e)))?;
                    continue;
                }
                problems.push(problem);
            }
        }
        Ok(problems)
    }

    /// Opens `rel` (relative, no `..`): each folder on the way without following links and
    /// checked to be the user's own (created 0700 if missing and `access` creates), the file
    /// itself with `O_NOFOLLOW` and checked to be the user's own regular file.
    pub fn open_file(&self, rel: impl AsRef<Path>, access: Access) -> io::Result<File> {
        let rel = rel.as_ref();
        let (parent, name) = split(rel)?;
        let creates = matches!(access, Access::ReadWriteCreate | Access::Append | Access::Replace | Access::CreateNew);
        let dir = self.walk(parent, creates)?;
        let base = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let flags = match access {
            Access::Read => OFlag::O_RDONLY,
            Access::ReadWrite => OFlag::O_RDWR,
            Access::ReadWriteCreate => OFlag::O_RDWR | OFlag::O_CREAT,
            Access::Append => OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT,
            Access::Replace | Access::CreateNew => OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        };
        if access == Access::Replace {
            match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.error(rel, e)),
            }
        }
        let fd = openat(dir.as_fd(), name, flags | base, Mode::from_bits_truncate(FILE_MODE))
            .map_err(|e| self.error(rel, e))?;
        let stat = fstat(&fd).map_err(|e| self.error(rel, e))?;
        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(io::Error::other(format!("{}: not a regular file", self.path.join(rel).display())));
        }
        self.check_owner(rel, &stat)?;
        if creates && stat.st_mode & 0o777 != FILE_MODE && stat.st_size == 0 {
            // Just made by us: exactly 0600, whatever the umask took away.
            fchmod(&fd, Mode::from_bits_truncate(FILE_MODE)).map_err(|e| self.error(rel, e))?;
        }
        Ok(File::from(fd))
    }

    /// Creates the folder `rel` and the ones above it (0700) if missing, checking each.
    pub fn create_dir_all(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        self.walk(rel.as_ref(), true).map(drop)
    }

    /// Whether `rel` exists (as anything, a link included: it is not followed).
    pub fn exists(&self, rel: impl AsRef<Path>) -> io::Result<bool> {
        let rel = rel.as_ref();
        let (parent, name) = split(rel)?;
        let Some(dir) = self.existing_dir(parent)? else { return Ok(false) };
        match fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Removes the file (or link, or socket) `rel`; a missing one is fine.
    pub fn remove_file(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        let (parent, name) = split(rel)?;
        let Some(dir) = self.existing_dir(parent)? else { return Ok(()) };
        match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// Renames `from` to `to` in the same folder of the state dir (atomic; replaces `to`).
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        let (parent, from_name) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        if parent != to_parent {
            return Err(io::Error::other("rename across folders of the state dir"));
        }
        let dir = self.walk(parent, false)?;
        nix::fcntl::renameat(dir.as_fd(), from_name, dir.as_fd(), to_name).map_err(|e| self.error(to, e))
    }

    /// The names in folder `rel`, sorted; an empty list when it does not exist.
    pub fn list(&self, rel: impl AsRef<Path>) -> io::Result<Vec<String>> {
        let rel = rel.as_ref();
        let Some(dir) = self.existing_dir(rel)? else { return Ok(Vec::new()) };
        let mut names: Vec<String> = entries(dir)
            .map_err(|e| self.error(rel, e))?
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes folder `rel` and everything in it, never following a link (a link is removed
    /// as the entry it is). A missing folder is fine.
    pub fn remove_dir_all(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        let (parent, name) = split(rel)?;
        let Some(dir) = self.existing_dir(parent)? else { return Ok(()) };
        remove_tree(dir.as_fd(), name).map_err(|e| self.error(rel, e))
    }

    /// The folder `rel` as [`StateDir::walk`] opens it, `None` if it does not exist.
    fn existing_dir(&self, rel: &Path) -> io::Result<Option<OwnedFd>> {
        match self.walk(rel, false) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The folder `rel` opened without following links, each component checked; created
    /// (0700) on the way if `create`.
    fn walk(&self, rel: &Path, create: bool) -> io::Result<OwnedFd> {
        let mut dir = self.fd.try_clone()?;
        let mut done = PathBuf::new();
        for part in rel.components() {
            let Component::Normal(name) = part else {
                return Err(io::Error::other(format!("{}: not a plain relative path", rel.display())));
            };
            done.push(name);
            dir = self.subdir(dir.as_fd(), name, &done, create)?;
        }
        Ok(dir)
    }

    fn subdir(
        &self,
        parent: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        create: bool,
    ) -> io::Result<OwnedFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(parent, name, flags, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                match mkdirat(parent, name, Mode::from_bits_truncate(DIR_MODE)) {
                    // Exactly 0700 whatever the umask; a folder made a moment ago in a private dir.
                    Ok(()) => fchmodat(parent, name, Mode::from_bits_truncate(DIR_MODE), FchmodatFlags::FollowSymlink)
                        .map_err(|e| self.error(rel, e))?,
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(self.error(rel, e)),
                }
                openat(parent, name, flags, Mode::empty()).map_err(|e| self.error(rel, e))?
            }
            other => other.map_err(|e| self.error(rel, e))?,
        };
        let stat = fstat(&fd).map_err(|e| self.error(rel, e))?;
        self.check_owner(rel, &stat)?;
        Ok(fd)
    }

    fn check_owner(&self, rel: &Path, stat: &FileStat) -> io::Result<()> {
        let me = Uid::effective();
        if stat.st_uid == me.as_raw() {
            return Ok(());
        }
        let path = self.path.join(rel);
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by {}, not by you ({}): gaffer does not use it; remove it: rm -r {}",
                path.display(),
                user_name(stat.st_uid),
                user_name(me.as_raw()),
                quote(&path)
            ),
        ))
    }

    /// An errno as an `io::Error` naming the path, saying plainly what a refused link is.
    fn error(&self, rel: &Path, e: Errno) -> io::Error {
        let path = self.path.join(rel);
        let text = match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                format!(
                    "{}: a symbolic link or not a folder on the way; gaffer never follows links in its state dir",
                    path.display()
                )
            }
            other => format!("{}: {}", path.display(), io::Error::from(other)),
        };
        let source = io::Error::from(e);
        io::Error::new(source.kind(), OsErrorAt { text, source })
    }
}

/// Opens `path`, which must be under `state_dir` (an attempt's or a hook's log), as
/// [`StateDir::open_file`] does.
pub fn open_under(state_dir: &Path, path: &Path, access: Access) -> io::Result<File> {
    let rel = path
        .strip_prefix(state_dir)
        .map_err(|_| io::Error::other(format!("{} is not in the state dir {}", path.display(), state_dir.display())))?;
    StateDir::open(state_dir).map_err(StateDirError::into_io)?.open_file(rel, access)
}

/// Opens the file `path` directly in a state dir (`<state dir>/gaffer.log`), as
/// [`StateDir::open_file`] does.
pub fn open_in_state_dir(path: &Path, access: Access) -> io::Result<File> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other(format!("{}: not a file in a state dir", path.display())));
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    StateDir::open(dir).map_err(StateDirError::into_io)?.open_file(name, access)
}

/// `rel` as (its folder, its last component).
fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) if rel.components().all(|c| matches!(c, Component::Normal(_))) => Ok((parent, name)),
        _ => Err(io::Error::other(format!("{}: not a plain relative path", rel.display()))),
    }
}

/// The names in the folder `dir` (without `.` and `..`), in the order the kernel lists them.
fn entries(dir: OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let mut listing = nix::dir::Dir::from_fd(dir)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes `name` in `parent`: a folder with its contents (depth first, by descriptor), or
/// any other entry (a link included) as itself.
fn remove_tree(parent: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = match openat(parent, name, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ELOOP | Errno::ENOTDIR) => return unlinkat(parent, name, UnlinkatFlags::NoRemoveDir),
        Err(e) => return Err(e),
    };
    for child in entries(dir.try_clone().map_err(|_| Errno::EMFILE)?)? {
        remove_tree(dir.as_fd(), OsStr::from_bytes(&child))?;
    }
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What is wrong with an entry gaffer keeps private, if anything.
fn problem_with(path: &Path, stat: &FileStat, is_dir: bool) -> Option<Problem> {
    let me = Uid::effective().as_raw();
    if stat.st_uid != me {
        let what = format!("owned by {}, not by you ({})", user_name(stat.st_uid), user_name(me));
        let fix = if path.file_name() == Some(OsStr::new("token")) {
            // Never adopt a token someone else wrote: they know it. A new one is made at start.
            format!("rm {}", quote(path))
        } else {
            let user = nix::unistd::User::from_uid(Uid::from_raw(me)).ok().flatten().map_or(me.to_string(), |u| u.name);
            format!("if you made it (with sudo): sudo chown -R {user} {}; if not, remove it", quote(path))
        };
        return Some(Problem { open: false, path: path.to_path_buf(), what, fix });
    }
    let mode = stat.st_mode & 0o777;
    if mode & 0o077 != 0 {
        let who = if mode & 0o022 != 0 { "other users can write to it" } else { "other users can read it" };
        let want = if is_dir { DIR_MODE } else { FILE_MODE };
        let what = format!("{who} (mode {mode:04o})");
        let fix = format!("chmod {want:o} {}", quote(path));
        return Some(Problem { open: true, path: path.to_path_buf(), what, fix });
    }
    None
}

/// Makes `path` (0700 exactly) and any missing folders above it (as `mkdir -p` would).
fn create_private_dir(path: &Path) -> Result<(), StateDirError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| os_error(parent, &e))?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE)).map_err(|e| os_error(path, &e))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(os_error(path, &e)),
    }
}

fn io_error(path: &Path, reason: &str) -> StateDirError {
    StateDirError::Io { path: path.to_path_buf(), reason: reason.to_string(), errno: None }
}

fn os_error(path: &Path, e: &io::Error) -> StateDirError {
    StateDirError::Io { path: path.to_path_buf(), reason: e.to_string(), errno: e.raw_os_error() }
}

/// `alice (uid 1000)`, or `uid 1000` for an id with no name.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// A path as one shell word.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b)) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A temp folder usable as a state dir (0700: `tempfile` leaves it to the umask).
#[cfg(test)]
pub(crate) fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(DIR_MODE)).expect("chmod 700");
    dir
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn private_tempdir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        (tmp, dir)
    }

    #[test]
    fn creates_a_private_dir_and_private_files_whatever_the_umask() {
        let (_tmp, path) = private_tempdir();
        let dir = StateDir::create_checked(&path).expect("state dir");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        dir.open_file("logs/1/2.1.log", Access::Replace).expect("log");
        assert_eq!(mode(&path.join("logs")), 0o700);
        assert_eq!(mode(&path.join("logs/1")), 0o700);
        assert_eq!(mode(&path.join("logs/1/2.1.log")), 0o600);
        assert!(StateDir::open_checked(&path).is_ok());
    }

    #[test]
    fn never_follows_a_link_inside() {
        let (tmp, path) = private_tempdir();
        let dir = StateDir::create_checked(&path).expect("state dir");
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        dir.create_dir_all("logs/1").expect("logs");
        std::os::unix::fs::symlink(&victim, path.join("logs/1/1.1.log")).expect("link");
        // Replace removes the link and writes a new file; the victim is untouched.
        dir.open_file("logs/1/1.1.log", Access::Replace).expect("replaced");
        assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious");
        std::os::unix::fs::symlink(&victim, path.join("logs/1/2.1.log")).expect("link");
        for access in [Access::Read, Access::Append, Access::ReadWriteCreate] {
            assert!(dir.open_file("logs/1/2.1.log", access).is_err(), "{access:?} followed a link");
        }
        std::os::unix::fs::symlink(tmp.path(), path.join("logs/2")).expect("dir link");
        let err = dir.open_file("logs/2/victim", Access::Read).expect_err("a linked folder");
        assert!(err.to_string().contains("never follows links"), "{err}");
        dir.remove_dir_all("logs/2").expect("remove the link");
        assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious");
    }

    #[test]
    fn refuses_an_open_dir_and_open_or_linked_entries_with_the_fix() {
        let (tmp, path) = private_tempdir();
        StateDir::create_checked(&path).expect("state dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(path.join("token"), "x").expect("token");
        std::fs::set_permissions(path.join("token"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(tmp.path(), path.join("logs")).expect("link");
        let err = StateDir::open_checked(&path).expect_err("refused").to_string();
        assert!(err.contains("other users can read it (mode 0755)") && err.contains("chmod 700"), "{err}");
        assert!(err.contains("token: other users can read it (mode 0644); fix: chmod 600"), "{err}");
        assert!(err.contains("logs: is a symbolic link"), "{err}");
    }

    #[test]
    fn quotes_paths_for_the_shell() {
        assert_eq!(quote(Path::new("/a/b.c")), "/a/b.c");
        assert_eq!(quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
