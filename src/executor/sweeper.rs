//! The end-of-attempt sweep for escaped processes (a `setsid` daemon, a double fork: gone from
//! the attempt's group but still carrying its `GAFFER_*` environment), for every attempt of
//! the process at once. One thread serves them: attempts that end while a sweep runs are
//! swept together by the next one, which reads each candidate process once and matches it
//! against all their markers. Per sweep it reads only what can be an escapee
//! ([`rules::next_step`]): not the leaders of running attempts nor their
//! children, not a process already found clean. With 1000 attempts running, each ending
//! attempt used to read the environment of every process forked since it started: O(N²)
//! reads, run concurrently on the blocking pool and all finishing late together.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock, mpsc};

use tokio::sync::oneshot;

use super::group::{self, Candidates};
use crate::model::sweep::{self as rules, Candidate, Marker, Stat, Step};

/// An attempt that ended, waiting for its escapees to be killed.
struct Request {
    marker: Marker,
    candidates: Candidates,
    killed: usize,
    passes: usize,
    reply: oneshot::Sender<usize>,
}

/// A killed escapee may have forked while it was found: the attempt is swept again while a
/// pass still kills something, at most this many times.
const PASSES: usize = 3;

/// How many "read, no `GAFFER_TASK_RUN_ID`" verdicts are kept between sweeps.
const CLEAN_AT_MOST: usize = 8192;

/// Kills what is left of an attempt outside its process group, waits until it is gone, and
/// returns how many processes that was. `candidates` names the pids to look at (the newest one
/// is read at each pass).
pub(super) async fn sweep(marker: Marker, candidates: Candidates) -> usize {
    let (reply, answer) = oneshot::channel();
    let request = Request { marker, candidates, killed: 0, passes: 0, reply };
    match sweeper() {
        Some(queue) => {
            if let Err(mpsc::SendError(request)) = queue.send(request) {
                sweep_alone(request).await;
            }
        }
        None => sweep_alone(request).await,
    }
    answer.await.unwrap_or(0)
}

/// Without the sweeper thread (it could not be started): the same sweep on the blocking pool.
async fn sweep_alone(request: Request) {
    let _ = tokio::task::spawn_blocking(move || {
        let mut pending = vec![request];
        let mut clean = HashSet::new();
        while !pending.is_empty() {
            sweep_once(&mut pending, &mut clean);
        }
    })
    .await;
}

fn sweeper() -> Option<&'static mpsc::Sender<Request>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let started = std::thread::Builder::new().name("gaffer-sweeper".into()).spawn(move || serve(&rx));
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no sweeper thread; sweeping on the blocking pool");
                    None
                }
            }
        })
        .as_ref()
}

/// The sweeper thread: sweeps whatever ended since the last sweep, until gaffer exits.
fn serve(queue: &mpsc::Receiver<Request>) {
    let mut pending: Vec<Request> = Vec::new();
    let mut clean = HashSet::new();
    loop {
        if pending.is_empty() {
            match queue.recv() {
                Ok(request) => pending.push(request),
                Err(_) => return,
            }
        }
        pending.extend(queue.try_iter());
        sweep_once(&mut pending, &mut clean);
    }
}

/// One pass over the pending attempts: kills what carries their markers, waits for it to be
/// gone, and answers each attempt whose pass found nothing (or that had its last pass).
fn sweep_once(pending: &mut Vec<Request>, clean: &mut HashSet<(u32, u64)>) {
    let found = find(pending, clean);
    let mut all: Vec<u32> = found.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    group::kill_processes(&all);
    group::wait_gone(&all, group::GONE_WITHIN);
    let mut still = Vec::new();
    for (mut request, pids) in std::mem::take(pending).into_iter().zip(found) {
        request.killed += pids.len();
        request.passes += 1;
        if pids.is_empty() || request.passes == PASSES {
            let _ = request.reply.send(request.killed);
        } else {
            still.push(request);
        }
    }
    *pending = still;
}

/// The pids carrying each request's marker, among the pids its window names (read now).
fn find(requests: &[Request], clean: &mut HashSet<(u32, u64)>) -> Vec<Vec<u32>> {
    let upto = group::last_pid();
    let windows: Vec<Candidates> = requests
        .iter()
        .map(|r| match (r.candidates, upto) {
            (Candidates::Since { after, .. }, Some(upto)) => Candidates::Since { after, upto },
            _ => Candidates::All,
        })
        .collect();
    let (pids, listed) = candidate_pids(&windows);
    // Only leaders registered before any stat of this pass was read vouch for their children.
    let registered_before = leaders().lock().map(|l| l.next).unwrap_or(0);
    let own = std::process::id();
    let mut found = vec![Vec::new(); requests.len()];
    let mut seen_clean = HashSet::new();
    for pid in pids {
        let mut c =
            Candidate { pid, own, leader: is_leader(pid), stat: None, parent_is_leader: false, known_clean: false };
        loop {
            match rules::next_step(&c) {
                Step::ReadStat => {
                    let Some(stat) = read_stat(pid) else { break };
                    c.stat = Some(stat);
                    c.parent_is_leader = leader_since(stat.ppid).is_some_and(|seq| seq < registered_before);
                    c.known_clean = clean.contains(&(pid, stat.start_ticks));
                    if c.known_clean {
                        seen_clean.insert((pid, stat.start_ticks));
                    }
                }
                Step::ReadEnviron => {
                    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { break };
                    let mine: Vec<usize> = (0..requests.len()).filter(|&i| windows[i].contains(pid)).collect();
                    let markers: Vec<&Marker> = mine.iter().map(|&i| &requests[i].marker).collect();
                    let reading = rules::matches(&environ, &markers);
                    if reading.clean
                        && let Some(stat) = c.stat
                    {
                        seen_clean.insert((pid, stat.start_ticks));
                    }
                    for m in reading.carries {
                        found[mine[m]].push(pid);
                    }
                    break;
                }
                Step::Skip(_) => break,
            }
        }
    }
    // A full listing saw every live process: forget the verdicts of those that are gone. Small
    // windows only add; the bound keeps a long-running `serve` flat.
    if listed || clean.len() + seen_clean.len() > CLEAN_AT_MOST {
        *clean = seen_clean;
    } else {
        clean.extend(seen_clean);
    }
    found
}

/// The pids to look at, and whether they come from a full listing of /proc.
fn candidate_pids(windows: &[Candidates]) -> (Vec<u32>, bool) {
    if let Some(pids) = group::few_in_all(windows) {
        return (pids, false);
    }
    (group::listed_pids().into_iter().filter(|pid| windows.iter().any(|w| w.contains(*pid))).collect(), true)
}

/// State, parent and start time from `/proc/PID/stat`; `None` when the process is gone.
fn read_stat(pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_comm) = stat.rsplit_once(')')?;
    // After the comm: state (3), ppid (4), …, starttime (22).
    let fields: Vec<&str> = after_comm.split_ascii_whitespace().take(20).collect();
    let [state, ppid, ..] = fields.as_slice() else { return None };
    Some(Stat {
        ppid: ppid.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
        exited: matches!(*state, "Z" | "X"),
    })
}

/// The leaders of running attempts, each with when it was registered. A leader is registered
/// once spawned and unregistered once it has exited, before it is reaped: while registered,
/// its pid cannot name another process.
struct Leaders {
    next: u64,
    by_pid: HashMap<u32, u64>,
}

fn leaders() -> &'static Mutex<Leaders> {
    static LEADERS: OnceLock<Mutex<Leaders>> = OnceLock::new();
    LEADERS.get_or_init(|| Mutex::new(Leaders { next: 0, by_pid: HashMap::new() }))
}

pub(super) fn register_leader(pid: u32) {
    if let Ok(mut l) = leaders().lock() {
        let seq = l.next;
        l.next += 1;
        l.by_pid.insert(pid, seq);
    }
}

/// Call before reaping the leader (unregistering early is always safe: it is then read).
pub(super) fn unregister_leader(pid: u32) {
    if let Ok(mut l) = leaders().lock() {
        l.by_pid.remove(&pid);
    }
}

fn leader_since(pid: u32) -> Option<u64> {
    leaders().lock().ok()?.by_pid.get(&pid).copied()
}

fn is_leader(pid: u32) -> bool {
    leader_since(pid).is_some()
}
