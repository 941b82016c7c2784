//! Which processes the end-of-attempt sweep reads, and what it finds in them. The sweep looks
//! for processes that left an ended attempt's process group (a `setsid` daemon, a double fork)
//! but still carry the attempt's environment; it kills them before the attempt is reported
//! ended. One sweep serves every attempt that ended meanwhile, so a process is read once per
//! sweep, not once per ended attempt; these rules keep it from reading what cannot be one of
//! them.

use std::collections::HashSet;

/// The environment gaffer gives every process of one attempt, as the `KEY=value` entries it
/// puts there. A process carries it when its environment holds all three entries, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Marker {
    pub state_dir: Vec<u8>,
    pub task_run: Vec<u8>,
    pub attempt: Vec<u8>,
}

impl Marker {
    pub fn new(state_dir: &std::path::Path, task_run: u64, attempt: u32) -> Self {
        use std::os::unix::ffi::OsStrExt;
        Marker {
            state_dir: [b"GAFFER_STATE_DIR=", state_dir.as_os_str().as_bytes()].concat(),
            task_run: format!("GAFFER_TASK_RUN_ID={task_run}").into_bytes(),
            attempt: format!("GAFFER_ATTEMPT={attempt}").into_bytes(),
        }
    }
}

/// What one read of `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    pub start_ticks: u64,
    /// Exited, waiting to be reaped (`Z`) or being torn down (`X`): it runs no more.
    pub exited: bool,
}

/// Everything the sweep knows about one candidate pid when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub pid: u32,
    /// gaffer's own pid.
    pub own: u32,
    /// The pid is the leader of a running attempt: spawned by gaffer and not yet reaped, so the
    /// pid is that leader. Its group is killed at its own attempt's end.
    pub leader: bool,
    /// `None` until `/proc/PID/stat` was read (and when it could not be: the process is gone).
    pub stat: Option<Stat>,
    /// The parent (from `stat`) is the leader of a running attempt, registered before the stat
    /// was read and still registered after: the process was forked by that leader (a leader
    /// is no subreaper of other attempts' orphans), so it descends from that attempt.
    pub parent_is_leader: bool,
    /// This very process (pid and start time) was read before and carried no `GAFFER_TASK_RUN_ID`.
    pub known_clean: bool,
}

/// What to do next with a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read `/proc/PID/stat`, then decide again.
    ReadStat,
    /// Read `/proc/PID/environ` and match it (see [`matches`]).
    ReadEnviron,
    /// Not an escapee of any ended attempt; nothing more to read.
    Skip(Why),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Own,
    Leader,
    Gone,
    Exited,
    ChildOfLeader,
    KnownClean,
}

/// The sweep's rule for one pid: cheapest facts first, the environment only when nothing
/// else rules the process out.
pub fn next_step(c: &Candidate) -> Step {
    if c.pid == c.own {
        return Step::Skip(Why::Own);
    }
    if c.leader {
        return Step::Skip(Why::Leader);
    }
    let Some(stat) = c.stat else { return Step::ReadStat };
    if stat.exited {
        Step::Skip(Why::Exited)
    } else if c.parent_is_leader {
        Step::Skip(Why::ChildOfLeader)
    } else if c.known_clean {
        Step::Skip(Why::KnownClean)
    } else {
        Step::ReadEnviron
    }
}

/// A stat that could not be read: the process is gone, nothing to kill.
pub fn gone() -> Step {
    Step::Skip(Why::Gone)
}

/// What one process's environment (`/proc/PID/environ`, NUL-separated) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Indices into the `markers` passed to [`matches`] of the attempts it carries (one, in
    /// practice).
    pub carries: Vec<usize>,
    /// No `GAFFER_TASK_RUN_ID` at all: it belongs to no attempt, and, keyed by pid and start
    /// time, need not be read again (a process gets an attempt's environment only from a parent
    /// in that attempt, at fork, and a fork is a new process).
    pub clean: bool,
}

/// Which of `markers` the environment carries. Every marker whose three entries are all
/// present matches, whatever else the environment holds.
pub fn matches(environ: &[u8], markers: &[&Marker]) -> Reading {
    let vars: HashSet<&[u8]> = environ.split(|b| *b == 0).filter(|v| v.starts_with(b"GAFFER_")).collect();
    let clean = !vars.iter().any(|v| v.starts_with(b"GAFFER_TASK_RUN_ID="));
    if clean {
        return Reading { carries: Vec::new(), clean };
    }
    let carries = markers
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            vars.contains(m.task_run.as_slice())
                && vars.contains(m.attempt.as_slice())
                && vars.contains(m.state_dir.as_slice())
        })
        .map(|(i, _)| i)
        .collect();
    Reading { carries, clean }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: u32 = 10;

    fn candidate(pid: u32) -> Candidate {
        Candidate { pid, own: OWN, leader: false, stat: None, parent_is_leader: false, known_clean: false }
    }

    const RUNNING: Stat = Stat { ppid: 1, start_ticks: 5, exited: false };

    fn running() -> Option<Stat> {
        Some(RUNNING)
    }

    #[test]
    fn which_pids_are_read() {
        let exited = Some(Stat { exited: true, ..RUNNING });
        #[rustfmt::skip]
        let table = [
            // what is known                                                        next step
            (candidate(OWN),                                                        Step::Skip(Why::Own)),
            (Candidate { leader: true, ..candidate(20) },                           Step::Skip(Why::Leader)),
            (candidate(20),                                                         Step::ReadStat),
            (Candidate { stat: exited, ..candidate(20) },                           Step::Skip(Why::Exited)),
            (Candidate { stat: running(), ..candidate(20) },                        Step::ReadEnviron),
            (Candidate { stat: running(), parent_is_leader: true, ..candidate(20) }, Step::Skip(Why::ChildOfLeader)),
            (Candidate { stat: running(), known_clean: true, ..candidate(20) },     Step::Skip(Why::KnownClean)),
            // Being a leader is known without reading anything.
            (Candidate { leader: true, stat: running(), ..candidate(20) },          Step::Skip(Why::Leader)),
        ];
        for (c, want) in table {
            assert_eq!(next_step(&c), want, "{c:?}");
        }
    }

    fn environ(vars: &[&str]) -> Vec<u8> {
        vars.iter().flat_map(|v| v.bytes().chain([0])).collect()
    }

    #[test]
    fn what_a_marker_match_means() {
        let dir = std::path::Path::new("/s");
        let a = Marker::new(dir, 7, 1);
        let b = Marker::new(dir, 8, 1);
        let a2 = Marker::new(dir, 7, 2);
        let other_dir = Marker::new(std::path::Path::new("/t"), 7, 1);
        let markers = [&a, &b, &a2, &other_dir];
        let full_a = ["PATH=/bin", "GAFFER_STATE_DIR=/s", "GAFFER_TASK_RUN_ID=7", "GAFFER_ATTEMPT=1"];
        #[rustfmt::skip]
        let table: [(&[&str], Vec<usize>, bool); 7] = [
            (&full_a,                                                                         vec![0], false),
            (&["PATH=/bin", "HOME=/h"],                                                       vec![],  true),
            // Dropping GAFFER_TASK_RUN_ID is the documented way to let a daemon outlive its task.
            (&["GAFFER_STATE_DIR=/s", "GAFFER_ATTEMPT=1"],                                    vec![],  true),
            // Another attempt's (or instance's) marker: not this one's, but read it again next time.
            (&["GAFFER_STATE_DIR=/s", "GAFFER_TASK_RUN_ID=9", "GAFFER_ATTEMPT=1"],            vec![],  false),
            (&["GAFFER_STATE_DIR=/s", "GAFFER_TASK_RUN_ID=07", "GAFFER_ATTEMPT=1"],           vec![],  false),
            (&["GAFFER_STATE_DIR=/s/", "GAFFER_TASK_RUN_ID=7", "GAFFER_ATTEMPT=1"],           vec![],  false),
            // A value set twice: each entry counts, as for a lookup of each variable alone.
            (&["GAFFER_STATE_DIR=/s", "GAFFER_TASK_RUN_ID=7", "GAFFER_TASK_RUN_ID=8", "GAFFER_ATTEMPT=1"], vec![0, 1], false),
        ];
        for (vars, carries, clean) in table {
            assert_eq!(matches(&environ(vars), &markers), Reading { carries, clean }, "{vars:?}");
        }
        assert_eq!(matches(b"", &markers), Reading { carries: vec![], clean: true }, "a zombie's empty environment");
    }
}
