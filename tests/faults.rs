//! Faults from outside: the disk filling up under gaffer. (kill -9 recovery is in `cli.rs`.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Project;

/// A tiny tmpfs mounted on a folder, unmounted when dropped. Needs root (CI runs as root).
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).ok()?;
        let options = format!("size={size},mode=700");
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(at).status().ok()?.success();
        ok.then(|| SmallDisk { at: at.to_path_buf() })
    }

    /// Fills the disk up to all but `keep` bytes.
    fn fill(&self, keep: u64) {
        let stat = nix::sys::statvfs::statvfs(&self.at).expect("statvfs");
        let free = stat.blocks_available() * stat.fragment_size();
        let status =
            Command::new("fallocate").args(["-l", &free.saturating_sub(keep).to_string()]).arg(self.filler()).status();
        assert!(status.expect("fallocate").success());
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

/// Fills the state dir's disk to all but `keep` bytes, runs 300 tasks, then frees the disk and
/// runs again. `stored_before_full`: `keep` is enough to store the job run before the disk fills.
fn full_disk_then_restart(keep: u64, stored_before_full: bool) {
    let mut text = String::from("[settings]\nworkers = 2\n");
    for i in 0..300 {
        text.push_str(&format!("[jobs.many.tasks.t{i}]\nrun = 'echo line {i}'\n"));
    }
    let p = Project::new(&text);
    let Some(disk) = SmallDisk::mount(&p.state_dir(), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    disk.fill(keep);

    let out = p.run(&["run", "workflow.toml", "--headless"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(stderr.contains("the disk is full") && stderr.contains("free some space"), "{stderr}");
    assert!(!stderr.contains("Previous I/O error"), "the first cause is told, not redb's echo: {stderr}");

    std::fs::remove_file(disk.filler()).expect("free the disk");
    let again = p.run(&["run", "workflow.toml", "--headless"]);
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
    let resumed = String::from_utf8_lossy(&again.stderr).contains("resuming it");
    assert_eq!(resumed, stored_before_full, "the run stored before the disk filled up is resumed, not doubled");
    let tasks = p.tasks();
    assert_eq!(tasks.len(), 300, "every task run is there");
    assert!(tasks.iter().all(|t| t["state"] == "succeeded"), "and all of them ran");
    assert_eq!(p.json(&["jobs", "--json"]).as_array().map(Vec::len), Some(1), "one job run, resumed or new");
}

#[test]
fn a_disk_full_before_the_run_is_stored_stops_gaffer_with_the_reason() {
    full_disk_then_restart(100 * 1024, false);
}

#[test]
fn a_disk_filling_up_mid_run_stops_gaffer_and_a_restart_loses_nothing() {
    full_disk_then_restart(170 * 1024, true);
}

#[test]
fn a_server_whose_disk_fills_up_exits_70_with_the_reason() {
    let p = Project::new("[jobs.j.tasks.t]\nrun = 'echo hi'\n");
    let Some(disk) = SmallDisk::mount(&p.state_dir(), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mut server = p
        .gaffer(&["serve", "workflow.toml", "--headless"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let socket = p.state_dir().join("gaffer.sock");
    support::wait_until(std::time::Duration::from_secs(10), "the socket", || socket.exists());
    disk.fill(0);
    let submit = p.run(&["submit", "j"]);
    assert_ne!(submit.status.code(), Some(0), "a run that cannot be stored is refused");
    assert!(String::from_utf8_lossy(&submit.stderr).contains("the disk is full"), "{submit:?}");
    let started = std::time::Instant::now();
    while server.try_wait().expect("poll").is_none() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "serve kept running on a broken store");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = server.wait_with_output().expect("serve output");
    assert_eq!(out.status.code(), Some(70));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the disk is full"));
}
