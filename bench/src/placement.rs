//! Where the round-trip processes run. On this 2-vCPU VM a round trip costs ~8 µs when both
//! processes share a core and ~40 µs when a wake-up has to cross to the other core, and the
//! scheduler flips between the two from one run to the next. Pinning both the anchor's and
//! the broker's processes the same way makes their ratio comparable.

use anyhow::Context;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Pins every thread of process `pid` (0: this one) to `cpu`; returns the previous mask of
/// its main thread, for [`restore`].
pub fn pin(pid: i32, cpu: usize) -> anyhow::Result<CpuSet> {
    let target = if pid == 0 {
        std::process::id() as i32
    } else {
        pid
    };
    let before = sched_getaffinity(Pid::from_raw(target))?;
    let mut only = CpuSet::new();
    only.set(cpu)?;
    for tid in threads(target)? {
        // A thread that exited meanwhile is fine to miss.
        let _ = sched_setaffinity(Pid::from_raw(tid), &only);
    }
    Ok(before)
}

/// Gives every thread of `pid` the mask `mask` again.
pub fn restore(pid: i32, mask: &CpuSet) -> anyhow::Result<()> {
    for tid in threads(pid)? {
        let _ = sched_setaffinity(Pid::from_raw(tid), mask);
    }
    Ok(())
}

fn threads(pid: i32) -> anyhow::Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {dir}"))?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect())
}
