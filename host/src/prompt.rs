//! Threads that must run soon after they wake, whatever else keeps the
//! cores busy: the watch that cuts off connections and the router that
//! sends new ones through the front door.
//!
//! Linux schedules ordinary threads by "earliest eligible virtual
//! deadline first" since 6.6; from 6.12 a thread may ask for a shorter
//! time slice (`sched_runtime` of `sched_setattr`), which brings its
//! deadline closer each time it wakes: it runs before threads that have
//! been running, without getting more of the cores than its share. Older
//! kernels ignore the request; it needs no privilege.

/// The slice asked for: far below the default (3 ms), at the kernel's
/// floor.
const SLICE_NS: u64 = 100_000;

/// `struct sched_attr` of `sched_setattr(2)`, as far as lockd sets it.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Asks the kernel to run the calling thread promptly when it wakes.
/// Returns whether the kernel took the request.
pub fn prompt() -> bool {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        runtime: SLICE_NS,
        ..SchedAttr::default()
    };
    // SAFETY: sched_setattr reads `size` bytes of `attr`, which lives
    // across the call; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
    rc == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_takes_the_request() {
        eprintln!("prompt: {}", super::prompt());
    }
}
