//! Helpers for the integration tests: a temp project with a workflow file, the real binary,
//! and a bounded "poll until" (never a bare sleep hoping it was long enough).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A temp folder holding `workflow.toml` with `text`.
    pub fn new(text: &str) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("workflow.toml"), text).expect("write workflow");
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".gaffer")
    }

    /// `gaffer ARGS` with the state dir of this project and its folder as cwd.
    pub fn gaffer(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gaffer"));
        cmd.current_dir(self.path()).env("GAFFER_STATE_DIR", self.state_dir()).env_remove("RUST_LOG").args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.gaffer(args).stdin(Stdio::null()).output().expect("run gaffer")
    }

    /// `gaffer run workflow.toml --json ARGS`: exit code and the events printed.
    pub fn run_json(&self, extra: &[&str]) -> (i32, Vec<Value>) {
        let mut args = vec!["run", "workflow.toml", "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        (out.status.code().unwrap_or(-1), events(&out.stdout, &out.stderr))
    }

    pub fn spawn_run(&self, extra: &[&str]) -> Child {
        let mut args = vec!["run", "workflow.toml", "--json"];
        args.extend_from_slice(extra);
        self.gaffer(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gaffer")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(out.status.success(), "gaffer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    pub fn tasks(&self) -> Vec<Value> {
        self.json(&["tasks", "--json"]).as_array().cloned().unwrap_or_default()
    }

    pub fn task(&self, name: &str) -> Value {
        self.tasks().into_iter().rfind(|t| t["task"] == name).unwrap_or_else(|| panic!("no task run of `{name}`"))
    }

    /// Every event of the journal so far.
    pub fn journal(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.state_dir().join("events")) else { return out };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        out
    }
}

/// The text of `file` in the project's folder (a test's task wrote it).
/// `gaffer ARGS --json --store URL` through `p`'s binary with `state_dir` (one no node serves:
/// the command reads the database itself): its JSON.
pub fn store_json(p: &Project, args: &[&str], url: &str, state_dir: &Path) -> Value {
    let out = p
        .gaffer(args)
        .args(["--json", "--store", url])
        .env("GAFFER_STATE_DIR", state_dir)
        .stdin(Stdio::null())
        .output()
        .expect("gaffer");
    assert!(out.status.success(), "gaffer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn read(p: &Project, file: &str) -> String {
    std::fs::read_to_string(p.path().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `file`'s lines, sorted: what tasks running at once appended, in an order that does not matter.
pub fn sorted_lines(p: &Project, file: &str) -> Vec<String> {
    let mut lines: Vec<String> = read(p, file).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

pub fn events(stdout: &[u8], stderr: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not an event line ({e}): {l}\nstderr: {}", String::from_utf8_lossy(stderr)))
        })
        .collect()
}

pub fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the control socket at `path` accepts connections (it exists a moment before it
/// listens: connecting in between is refused).
pub fn wait_for_socket(path: &Path) {
    wait_until(Duration::from_secs(10), "the control socket", || std::os::unix::net::UnixStream::connect(path).is_ok());
}

/// True if a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args(["-s", sig, &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

/// A `gaffer serve` in the background, stopped (SIGTERM) when dropped.
pub struct Server {
    pub child: std::process::Child,
}

impl Server {
    /// Spawns `cmd` (a `gaffer serve …` set up by the test); SIGTERM and reaped when dropped,
    /// so a failing assertion never leaves a server running.
    pub fn spawn(cmd: &mut std::process::Command) -> Server {
        Server { child: cmd.spawn().expect("serve") }
    }

    /// `gaffer serve workflow.toml --headless`, once its control socket exists.
    pub fn start(p: &Project) -> Server {
        let server = Server::spawn(
            p.gaffer(&["serve", "workflow.toml", "--headless"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        );
        let socket = p.state_dir().join("gaffer.sock");
        wait_for_socket(&socket);
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), "TERM");
        }
        let _ = self.child.wait();
    }
}

/// A tiny tmpfs mounted on a folder, unmounted when dropped. Needs root (CI runs as root).
pub struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).ok()?;
        let options = format!("size={size},mode=700");
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(at).status().ok()?.success();
        ok.then(|| SmallDisk { at: at.to_path_buf() })
    }

    /// Fills the disk up to all but `keep` bytes (or as close as a writer racing us allows:
    /// whatever gaffer writes meanwhile only fills it further).
    pub fn fill(&self, keep: u64) {
        std::fs::create_dir_all(self.filler()).expect("filler dir");
        for n in 0..32 {
            let stat = nix::sys::statvfs::statvfs(&self.at).expect("statvfs");
            let free = stat.blocks_available() * stat.fragment_size();
            if free <= keep + 4096 {
                return;
            }
            // Half of what is left each time a racing write makes the exact size fail.
            let size = if n == 0 { free - keep } else { (free - keep) / 2 };
            let _ = Command::new("fallocate")
                .args(["-l", &size.to_string()])
                .arg(self.filler().join(n.to_string()))
                .status();
        }
    }

    /// Frees what `fill` took.
    pub fn free(&self) {
        std::fs::remove_dir_all(self.filler()).expect("free the disk");
    }

    fn filler(&self) -> PathBuf {
        self.at.join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}
