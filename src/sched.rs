//! A scheduler hint for the threads on the enqueue → start path.
//!
//! A task start crosses threads several times: the engine thread asks the store thread to
//! commit (twice), and a spawn thread to start the process, each time waking a thread that
//! slept. On a busy machine each of those wake-ups waited for a CPU behind whatever ran there
//! (measured under a load average of 10–15 on 2 CPUs: p90 10–15 ms per wake-up, more than the
//! work itself). Linux's EEVDF scheduler (6.6+) runs first the runnable thread with the earliest
//! virtual deadline, which is its virtual runtime plus its *slice*, and since 6.12 lets a
//! waking thread with a shorter slice preempt the running one. These threads ask for the
//! shortest slice (`sched_attr.sched_runtime`, 0.1 ms; no privilege needed): they are picked
//! soon after they wake, and they are preempted sooner if they run long. Their share of the CPU
//! (their weight, the nice value) is unchanged, so nothing else gets less.
//!
//! `SCHED_FLAG_RESET_ON_FORK`: the tasks' processes (and any other thread or process these
//! threads start) get the system's default slice, not this one.
//! Kernels without custom slices accept the call and ignore the slice; an error is ignored:
//! it is a hint.

use std::cell::Cell;

/// The slice asked for, in nanoseconds (the kernel's lowest).
const SLICE_NS: u64 = 100_000;

/// `struct sched_attr` (include/uapi/linux/sched/types.h, `SCHED_ATTR_SIZE_VER1`).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

const SCHED_OTHER: u32 = 0;
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
/// Keep the thread's nice value (and its utilization clamps) as they are.
const SCHED_FLAG_KEEP_PARAMS: u64 = 0x10;

thread_local! {
    static ASKED: Cell<bool> = const { Cell::new(false) };
}

/// Asks for a short scheduler slice for the calling thread (once per thread; later calls are
/// free). For threads whose wake-up is on the enqueue → start path.
pub fn prefer_short_waits() {
    if ASKED.with(|asked| asked.replace(true)) {
        return;
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: SCHED_OTHER,
        flags: SCHED_FLAG_RESET_ON_FORK | SCHED_FLAG_KEEP_PARAMS,
        nice: 0,
        priority: 0,
        runtime: SLICE_NS,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    if let Err(e) = set_attr(&attr) {
        tracing::debug!("no short scheduler slice for this thread: {e}");
    }
}

/// `sched_setattr(0, attr, 0)`: the calling thread.
#[allow(unsafe_code)]
fn set_attr(attr: &SchedAttr) -> std::io::Result<()> {
    // SAFETY: the kernel reads `size` bytes from a live, properly laid out `sched_attr`.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The calling thread's slice as the kernel reports it (ns), for tests.
#[cfg(test)]
#[allow(unsafe_code)]
fn current_slice_ns() -> std::io::Result<u64> {
    let mut attr = std::mem::MaybeUninit::<SchedAttr>::zeroed();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel writes at most `size` bytes into the zeroed buffer.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, attr.as_mut_ptr(), size, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: zeroed, then filled by the kernel; every bit pattern is a valid `SchedAttr`.
    Ok(unsafe { attr.assume_init() }.runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a kernel with custom slices (6.12+), the thread gets the short slice, and a thread
    /// it starts (so also a process: the same `clone`) does not inherit it.
    #[test]
    fn a_thread_asks_for_a_short_slice_and_its_children_do_not_inherit_it() {
        std::thread::spawn(|| {
            let before = current_slice_ns().expect("sched_getattr");
            prefer_short_waits();
            let after = current_slice_ns().expect("sched_getattr");
            if before == after && after != SLICE_NS {
                eprintln!("this kernel has no custom slices (slice {after} ns): nothing to check");
                return;
            }
            assert_eq!(after, SLICE_NS);
            let child = std::thread::spawn(|| current_slice_ns().expect("sched_getattr")).join().expect("join");
            assert_ne!(child, SLICE_NS, "a thread started from it has the default slice");
        })
        .join()
        .expect("the test thread");
    }
}
