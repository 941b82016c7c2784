//! The local executor against real processes.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::group::{is_same_process_alive, kill_group_now, terminate_group};
use super::*;
use crate::config::{CommandSpec, CostSource};

struct Run {
    events: Vec<AttemptEvent>,
    exit: AttemptExit,
    log: String,
}

fn spec(dir: &Path, command: CommandSpec) -> AttemptSpec {
    use std::os::unix::fs::DirBuilderExt;
    // The log goes under the state dir, which must be private (see `state_dir`).
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir.join("state"));
    AttemptSpec {
        job: "nightly".into(),
        task: "fetch".into(),
        job_run: 7,
        task_run: 42,
        attempt: 2,
        command,
        env: vec![("EXTRA".into(), "extra value".into())],
        stdin: None,
        cwd: dir.to_path_buf(),
        state_dir: dir.join("state"),
        log_path: dir.join("state/logs/7/42.2.log"),
        log_cap_bytes: 1024 * 1024,
        output_limits: crate::config::OutputLimits::default(),
        cost_source: CostSource::Protocol,
    }
}

fn sh(dir: &Path, script: &str) -> AttemptSpec {
    spec(dir, CommandSpec::Shell(script.into()))
}

async fn run(spec: AttemptSpec) -> Run {
    let log_path = spec.log_path.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let attempt = LocalExecutor.spawn(spec, tx).expect("spawn");
    let exit = tokio::time::timeout(Duration::from_secs(20), attempt.done).await.expect("attempt finished in time");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let log = String::from_utf8_lossy(&std::fs::read(&log_path).expect("log")).into_owned();
    Run { events, exit, log }
}

fn without_activity(events: &[AttemptEvent]) -> Vec<AttemptEvent> {
    events.iter().filter(|e| **e != AttemptEvent::Activity).cloned().collect()
}

fn warnings(events: &[AttemptEvent]) -> Vec<String> {
    events.iter().filter_map(|e| if let AttemptEvent::Warning(w) = e { Some(w.clone()) } else { None }).collect()
}

/// Bounded wait with a clear failure message, instead of sleeping and hoping.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Live (non-zombie) members of a process group, from /proc. Zombies count as dead: pid 1 in
/// a container does not always reap them.
fn live_group_members(pgid: i32) -> Vec<u32> {
    group::live_members(pgid)
}

fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn logs_both_streams_and_reports_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = run(sh(dir.path(), "echo hi; echo err >&2")).await;
    assert_eq!(ok.exit, AttemptExit { exit_code: Some(0), signal: None });
    assert!(ok.log.contains("hi\n") && ok.log.contains("err\n"), "{}", ok.log);
    assert!(ok.events.contains(&AttemptEvent::Activity));

    let failed = run(sh(dir.path(), "exit 7")).await;
    assert_eq!(failed.exit.exit_code, Some(7));
    assert!(!failed.exit.success());
}

#[tokio::test]
async fn control_channel_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = r#"
        echo heartbeat >&3
        printf 'progress 3/12 fetching \033[2Jpage 3\n' >&3
        echo 'cost usd=0.0123 input_tokens=1200 output_tokens=340 model=claude-sonnet-4-5' >&3
        echo 'output url=https://example.com/?a=b' >&3
        printf 'output notes<<EOF\nfirst\nsecond\nEOF\n' >&3
        echo 'launch the missiles' >&3
        echo '' >&3
        echo 'heartbeat' "on stdout is just a log line"
    "#;
    let r = run(sh(dir.path(), script)).await;
    assert!(r.exit.success());
    let cost = CostReport {
        cache_read_tokens: None,
        cache_write_tokens: None,
        usd_micros: Some(12_300),
        input_tokens: Some(1200),
        output_tokens: Some(340),
        model: Some("claude-sonnet-4-5".into()),
    };
    let expected = vec![
        AttemptEvent::Heartbeat,
        AttemptEvent::Progress("3/12 fetching ^[[2Jpage 3".into()),
        AttemptEvent::Cost(cost),
        AttemptEvent::Output { key: "url".into(), value: "https://example.com/?a=b".into() },
        AttemptEvent::Output { key: "notes".into(), value: "first\nsecond".into() },
        AttemptEvent::Warning("unknown control message `launch the missiles`".into()),
    ];
    assert_eq!(without_activity(&r.events), expected);
    assert!(r.log.contains("[gaffer] warning: unknown control message `launch the missiles`"), "{}", r.log);
}

#[tokio::test]
async fn bad_cost_lines_become_warnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "for l in 'cost usd=-1' 'cost usd=NaN' 'cost usd=1e5' \
                  'cost input_tokens=99999999999999999999999' 'cost' 'cost flavour=x'; do echo \"$l\" >&3; done
                  printf 'output open<<END\\nnever closed\\n' >&3";
    let r = run(sh(dir.path(), script)).await;
    assert!(r.exit.success());
    let w = warnings(&r.events);
    assert_eq!(w.len(), 7, "{w:?}");
    assert!(w[6].contains("not terminated"), "{w:?}");
    assert_eq!(without_activity(&r.events).len(), 7, "only warnings: {:?}", r.events);
}

#[tokio::test]
async fn environment_stdin_and_cwd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work dir");
    std::fs::create_dir(&work).expect("mkdir");
    let mut s = sh(
        &work,
        "echo \"$GAFFER_JOB $GAFFER_JOB_RUN_ID $GAFFER_TASK $GAFFER_TASK_RUN_ID $GAFFER_ATTEMPT $GAFFER_CONTROL_FD\"
         echo \"state=$GAFFER_STATE_DIR extra=$EXTRA\"; pwd; cat",
    );
    s.stdin = Some("from stdin\n".into());
    s.log_path = s.state_dir.join("a.log");
    let r = run(s).await;
    assert!(r.exit.success());
    assert!(r.log.contains("nightly 7 fetch 42 2 3\n"), "{}", r.log);
    assert!(r.log.contains(&format!("state={} extra=extra value\n", work.join("state").display())), "{}", r.log);
    assert!(r.log.contains(&format!("{}\n", work.display())), "{}", r.log);
    assert!(r.log.contains("from stdin\n"), "{}", r.log);

    // Without stdin the task reads /dev/null and does not hang.
    let r = run(sh(dir.path(), "cat; echo done")).await;
    assert!(r.log.contains("done"), "{}", r.log);
}

#[tokio::test]
async fn argv_mode_passes_arguments_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let argv = ["printf", "<%s>\\n", "two words", "$HOME", "*"].map(String::from).to_vec();
    let r = run(spec(dir.path(), CommandSpec::Argv(argv))).await;
    assert!(r.exit.success());
    assert_eq!(r.log, "<two words>\n<$HOME>\n<*>\n");
}

#[tokio::test]
async fn spawn_errors_name_program_and_cwd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::unbounded_channel();
    let missing = spec(dir.path(), CommandSpec::Argv(vec!["no-such-program-xyz".into()]));
    let err = LocalExecutor.spawn(missing, tx.clone()).err().expect("not found").to_string();
    assert!(err.contains("no-such-program-xyz") && err.contains(&dir.path().display().to_string()), "{err}");

    let nowhere = sh(&dir.path().join("nope"), "true");
    let err = LocalExecutor.spawn(nowhere, tx.clone()).err().expect("no cwd").to_string();
    assert!(err.contains("nope") && err.contains("sh"), "{err}");

    let empty = spec(dir.path(), CommandSpec::Argv(Vec::new()));
    assert!(matches!(LocalExecutor.spawn(empty, tx), Err(SpawnError::EmptyCommand)));
}

#[tokio::test]
async fn argv_programs_are_looked_up_along_the_tasks_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let tool = bin.join("gaffer-test-tool");
    std::fs::write(&tool, "#!/bin/sh\necho \"tool ran with $1\"\n").expect("write tool");
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut s = spec(dir.path(), CommandSpec::Argv(vec!["gaffer-test-tool".into(), "an arg".into()]));
    s.env.push(("PATH".into(), format!("/nowhere:{}:/usr/bin:/bin", bin.display())));
    let r = run(s).await;
    assert!(r.exit.success(), "{}", r.log);
    assert_eq!(r.log, "tool ran with an arg\n");

    // Not on the task's PATH (gaffer's own PATH is not searched then).
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut s = spec(dir.path(), CommandSpec::Argv(vec!["sh".into(), "-c".into(), "true".into()]));
    s.env.push(("PATH".into(), bin.display().to_string()));
    let err = LocalExecutor.spawn(s, tx).err().expect("sh is not on that PATH").to_string();
    assert!(err.contains("`sh`") && err.contains("No such file"), "{err}");
}

/// Fds of this process that a child inherits (not O_CLOEXEC): whatever started the test run
/// may have left some open; gaffer's own must all be O_CLOEXEC.
fn inheritable_fds() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|fd| {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap_or("0");
            u32::from_str_radix(flags.trim(), 8).is_ok_and(|f| f & 0o2_000_000 == 0)
        })
        .collect()
}

#[tokio::test]
async fn task_gets_only_fds_0_to_3_and_default_signals() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `ls` lists the shell's fds (its own directory fd is in its own process).
    let r = run(sh(dir.path(), "ls /proc/$$/fd")).await;
    assert!(r.exit.success(), "{}", r.log);
    let inherited = inheritable_fds();
    let extra: Vec<&str> =
        r.log.lines().filter(|fd| !["0", "1", "2", "3"].contains(fd) && !inherited.iter().any(|i| i == fd)).collect();
    assert_eq!(extra, Vec::<&str>::new(), "fds leaked into the task: {}", r.log);
    for fd in ["0", "1", "2", "3"] {
        assert!(r.log.lines().any(|l| l == fd), "fd {fd} missing: {}", r.log);
    }

    // Run directly, not from sh: sh blocks all signals for moments while it waits for a child.
    let argv = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"].map(String::from).to_vec();
    let r = run(spec(dir.path(), CommandSpec::Argv(argv))).await;
    assert!(r.exit.success(), "{}", r.log);
    let mask = |name: &str| {
        let line = r.log.lines().find(|l| l.starts_with(name)).expect("status line");
        u64::from_str_radix(line[name.len()..].trim(), 16).expect("hex mask")
    };
    assert_eq!(mask("SigBlk:"), 0, "{}", r.log);
    // (glibc's posix_spawn leaves its internal signals 32 and 33 ignored, as for every
    // posix_spawn caller.)
    for signal in [libc::SIGPIPE, libc::SIGINT, libc::SIGTERM] {
        assert_eq!(mask("SigIgn:") & (1 << (signal - 1)), 0, "signal {signal} ignored: {}", r.log);
    }
}

#[tokio::test]
async fn death_by_any_signal_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(sh(dir.path(), "kill -40 $$")).await;
    assert_eq!(r.exit, AttemptExit { exit_code: None, signal: Some(40) });
}

#[tokio::test]
async fn nul_bytes_are_a_spawn_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = LocalExecutor.spawn(sh(dir.path(), "echo a\0b"), tx).err().expect("NUL").to_string();
    assert!(err.contains("`sh`") && err.contains("NUL"), "{err}");
}

#[tokio::test]
async fn terminate_group_kills_the_whole_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::unbounded_channel();
    let attempt = LocalExecutor.spawn(sh(dir.path(), "sleep 100 & sleep 100 & wait"), tx).expect("spawn");
    let process = attempt.process.expect("process");
    assert_eq!(process.pgid, process.pid as i32);
    assert!(process.start_ticks > 0);
    assert!(is_same_process_alive(&process));
    wait_until("sh and two sleeps", Duration::from_secs(5), || live_group_members(process.pgid).len() == 3).await;

    let started = Instant::now();
    terminate_group(process, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(3), "SIGTERM was enough");
    let exit = tokio::time::timeout(Duration::from_secs(5), attempt.done).await.expect("done");
    assert_eq!(exit, AttemptExit { exit_code: None, signal: Some(libc::SIGTERM) });
    assert_eq!(live_group_members(process.pgid), Vec::<u32>::new());
    assert!(!is_same_process_alive(&process));
    // Safe on a group that is gone.
    terminate_group(process, Duration::from_secs(1)).await;
    kill_group_now(process.pgid);
}

#[tokio::test]
async fn terminate_group_escalates_to_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let script = "trap '' TERM; echo heartbeat >&3; while :; do sleep 0.05; done";
    let attempt = LocalExecutor.spawn(sh(dir.path(), script), tx).expect("spawn");
    let process = attempt.process.expect("process");
    // The heartbeat comes after the trap is installed.
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("heartbeat");
    assert_eq!(first, Some(AttemptEvent::Heartbeat));
    terminate_group(process, Duration::from_millis(300)).await;
    let exit = tokio::time::timeout(Duration::from_secs(5), attempt.done).await.expect("done");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
}

#[tokio::test]
async fn leader_exit_kills_background_children_holding_the_pipes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("bg.pid");
    let script = format!("sleep 100 & echo $! > '{}'; echo leader done", pid_file.display());
    let started = Instant::now();
    let r = run(sh(dir.path(), &script)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(r.exit.success());
    let pid: u32 = std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("pid number");
    // Gone by the time the attempt is over, not some time later: a graceful stop that returns
    // must leave nothing running.
    assert!(is_dead(pid), "the background sleep outlived its attempt");
}

/// A task that starts `sleep 100` in a session of its own (behind `prefix`) and exits once the
/// daemon has left its process group, its pid in `pid_file`.
fn daemon_script(prefix: &str, pid_file: &Path) -> String {
    let pid_file = pid_file.display();
    format!(
        "{prefix} setsid sh -c 'echo $$ > \"$0\"; exec sleep 100' '{pid_file}' </dev/null >/dev/null 2>&1 3>&- &\n\
         while [ ! -s '{pid_file}' ]; do sleep 0.01; done"
    )
}

/// Runs `daemon_script(prefix)`: the attempt, and the daemon's pid.
async fn run_daemon_task(prefix: &str) -> (Run, u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("daemon.pid");
    let r = run(sh(dir.path(), &daemon_script(prefix, &pid_file))).await;
    assert!(r.exit.success(), "{}", r.log);
    let pid = std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("pid number");
    (r, pid)
}

#[tokio::test]
async fn a_setsid_daemon_is_killed_at_the_end_of_its_attempt() {
    // Its own session and group, its output away from the task's pipes: only the environment
    // still ties it to the attempt.
    let (r, pid) = run_daemon_task("").await;
    assert!(is_dead(pid), "the setsid daemon outlived its attempt");
    let warned = warnings(&r.events);
    assert!(warned.iter().any(|w| w.contains("left the task's process group")), "{warned:?} {}", r.log);
}

#[tokio::test]
async fn a_daemon_without_the_attempts_environment_is_left_alone() {
    let (_, pid) = run_daemon_task("env -u GAFFER_TASK_RUN_ID").await;
    let alive = !is_dead(pid);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    assert!(alive, "a process that dropped GAFFER_TASK_RUN_ID may outlive the task (documented escape hatch)");
}

#[test]
fn pid_windows_wrap_at_most_once() {
    let window = group::Candidates::Since { after: 100, upto: 110 };
    assert!(!window.contains(100) && window.contains(101) && window.contains(110) && !window.contains(111));
    let wrapped = group::Candidates::Since { after: 32_760, upto: 5 };
    assert!(wrapped.contains(32_761) && wrapped.contains(3) && !wrapped.contains(6) && !wrapped.contains(32_760));
    assert!(group::Candidates::All.contains(1));
}

#[tokio::test]
async fn huge_output_without_newline_is_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = sh(dir.path(), "head -c 5000000 /dev/zero | tr '\\0' a; echo; echo the end");
    s.log_cap_bytes = 64 * 1024;
    let r = run(s).await;
    assert!(r.exit.success());
    let marker = "… [gaffer: 4934473 bytes omitted] …\n";
    assert!(r.log.len() <= 64 * 1024 + marker.len() + 1, "log is {} bytes", r.log.len());
    assert!(r.log.contains(marker), "{}", &r.log[32 * 1024 - 10..32 * 1024 + 60]);
    assert!(r.log.starts_with("aaaa") && r.log.ends_with("aaa\nthe end\n"));
}

#[tokio::test]
async fn claude_json_result_becomes_a_cost_event_and_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = sh(
        dir.path(),
        r#"echo 'working...'; echo 'output session_id=mine' >&3; echo '{"type":"result","total_cost_usd":0.0421,"usage":{"input_tokens":1000,"output_tokens":200},"result":"ok","session_id":"s1","is_error":true}'"#,
    );
    s.cost_source = CostSource::ClaudeJson;
    let r = run(s).await;
    let cost = CostReport {
        usd_micros: Some(42_100),
        input_tokens: Some(1000),
        output_tokens: Some(200),
        ..Default::default()
    };
    let out = |k: &str, v: &str| AttemptEvent::Output { key: k.into(), value: v.into() };
    assert_eq!(
        without_activity(&r.events),
        vec![
            out("session_id", "mine"),
            AttemptEvent::Cost(cost),
            out("result", "ok"),
            out("is_error", "true"),
            AttemptEvent::AgentError("error: ok".into()),
        ],
        "the task's own fd-3 output wins over the result's"
    );

    let mut s = sh(dir.path(), "echo no json here");
    s.cost_source = CostSource::OpenAiJson;
    let r = run(s).await;
    assert_eq!(warnings(&r.events).len(), 1, "{:?}", r.events);
}

#[tokio::test]
async fn activity_is_throttled_for_chatty_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(sh(dir.path(), "seq 1 100000")).await;
    assert!(r.log.ends_with("99999\n100000\n"));
    let activity = r.events.iter().filter(|e| **e == AttemptEvent::Activity).count();
    assert!((1..1000).contains(&activity), "{activity} activity events");
}

#[tokio::test]
async fn noop_executor_succeeds_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let attempt = NoopExecutor.spawn(sh(dir.path(), "exit 1"), tx).expect("spawn");
    assert!(attempt.process.is_none());
    assert!(attempt.done.await.success());
    assert!(rx.try_recv().is_err());
    assert!(!dir.path().join("logs").exists());
}

#[tokio::test]
async fn attempts_ending_together_are_each_swept_of_their_own_daemons_only() {
    // Six attempts end at about the same time, so one sweep serves several; a seventh still
    // runs with its own daemon, which must survive until its attempt ends.
    let dir = tempfile::tempdir().expect("tempdir");
    let spec_for = |task_run: u64, script: &str| AttemptSpec {
        task_run,
        log_path: dir.path().join(format!("state/logs/7/{task_run}.2.log")),
        ..sh(dir.path(), script)
    };
    let pid_of = |name: &str| -> u32 {
        std::fs::read_to_string(dir.path().join(name)).expect("pid file").trim().parse().expect("pid number")
    };
    let release = dir.path().join("release");
    let neighbour_script = format!(
        "{}\nwhile [ ! -e '{}' ]; do sleep 0.01; done",
        daemon_script("", &dir.path().join("neighbour.pid")),
        release.display()
    );
    let neighbour = tokio::spawn(run(spec_for(200, &neighbour_script)));
    wait_until("the neighbour's daemon", Duration::from_secs(10), || dir.path().join("neighbour.pid").exists()).await;
    let together: Vec<_> = (0..6u64)
        .map(|i| tokio::spawn(run(spec_for(100 + i, &daemon_script("", &dir.path().join(format!("d{i}.pid")))))))
        .collect();
    for (i, attempt) in together.into_iter().enumerate() {
        let r = attempt.await.expect("attempt");
        assert!(r.exit.success(), "{}", r.log);
        assert!(is_dead(pid_of(&format!("d{i}.pid"))), "attempt {i}'s daemon outlived it");
        let warned = warnings(&r.events);
        assert!(warned.iter().any(|w| w.starts_with("killed 1 process(es)")), "attempt {i}: {warned:?}");
    }
    let neighbours_daemon = pid_of("neighbour.pid");
    assert!(!is_dead(neighbours_daemon), "a running attempt's daemon was killed by another attempt's sweep");
    std::fs::write(&release, "").expect("release");
    let r = tokio::time::timeout(Duration::from_secs(20), neighbour).await.expect("neighbour ended").expect("join");
    assert!(r.exit.success(), "{}", r.log);
    assert!(is_dead(neighbours_daemon), "the neighbour's daemon outlived its attempt");
}

/// Crash recovery through the trait: what an attempt left running is killed — its recorded group
/// and a `setsid` escapee found by its environment — while a recorded pid that is now another
/// process (its start time differs) is left alone.
#[tokio::test]
async fn kill_orphans_kills_an_attempts_group_and_escapees_but_not_a_recycled_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("escapee.pid");
    let script = format!("{}\nsleep 100", daemon_script("", &pid_file));
    let spec = sh(dir.path(), &script);
    let state_dir = spec.state_dir.clone();
    let (tx, _rx) = mpsc::unbounded_channel();
    let attempt = LocalExecutor.spawn(spec, tx).expect("spawn");
    let process = attempt.process.expect("process");
    let written = || std::fs::read_to_string(&pid_file).is_ok_and(|s| s.trim().parse::<u32>().is_ok());
    wait_until("the escapee's pid", Duration::from_secs(5), written).await;
    let escapee: u32 = std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("pid number");

    use std::os::unix::process::CommandExt;
    let mut bystander = std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("spawn sleep");
    let recycled = ProcessHandle { pid: bystander.id(), pgid: bystander.id() as i32, start_ticks: 1 };
    LocalExecutor.kill_orphans(&state_dir, 999, 1, Some(recycled));
    assert!(bystander.try_wait().expect("try_wait").is_none(), "a recycled pid was killed");
    bystander.kill().expect("kill the bystander");
    let _ = bystander.wait();

    LocalExecutor.kill_orphans(&state_dir, 42, 2, Some(process));
    // Checked without yielding to the runtime, so the end-of-attempt sweep cannot be what did it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !is_dead(escapee) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(is_dead(escapee), "the escapee outlived kill_orphans");
    let exit = tokio::time::timeout(Duration::from_secs(5), attempt.done).await.expect("done");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(!LocalExecutor.is_running(&process));
}

/// SPEC §7 on the spawn thread: a spawn handed the commit's outcome starts its process only once
/// the commit is durable, and none at all when it failed (leaving no log of an attempt that
/// never ran). The log is made while the commit is in flight, off the path after it.
#[tokio::test]
async fn a_spawn_waits_for_its_commit_and_starts_nothing_when_it_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let script = format!("echo $$ > '{}'", marker.display());

    let failed: Durable = Box::pin(std::future::ready(false));
    let (tx, _rx) = mpsc::unbounded_channel();
    let spec = sh(dir.path(), &script);
    let log_path = spec.log_path.clone();
    let spawned = spawn_off_thread(Arc::new(LocalExecutor), spec, tx, Some(failed)).await;
    assert!(spawned.is_none(), "a failed commit started something");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists(), "the process ran although its commit failed");
    assert!(!log_path.exists(), "a log was left for an attempt that never started");

    let (commit, durable) = tokio::sync::oneshot::channel::<bool>();
    let durable: Durable = Box::pin(async move { durable.await.unwrap_or(false) });
    let (tx, _rx) = mpsc::unbounded_channel();
    let spawning = tokio::spawn(spawn_off_thread(Arc::new(LocalExecutor), sh(dir.path(), &script), tx, Some(durable)));
    wait_until("the log made while the commit is in flight", Duration::from_secs(10), || log_path.exists()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!spawning.is_finished() && !marker.exists(), "started before its commit was durable");
    commit.send(true).expect("the spawn waits");
    let running = spawning.await.expect("joined").expect("durable").expect("spawned");
    tokio::time::timeout(Duration::from_secs(20), running.done).await.expect("finished in time");
    assert!(marker.exists(), "the process ran once its commit was durable");
}
