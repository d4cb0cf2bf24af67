//! Pinning the timed rounds to one CPU at real-time priority (SCHED_FIFO 50), so that the tails
//! measured are the file systems' and not the scheduler's.
//!
//! Only root asks. The CPU is the last one the process may run on (the first takes most of the
//! interrupts), set with sched_setaffinity on the benchmarking thread alone; the priority is
//! set on that thread by chrt(1), as the policy call has no safe wrapper here. What is refused
//! is left as it was and said; lifting restores the affinity and the policy found at the start.
//! Threads started while pinned inherit both, so the fault service is started before (see
//! `Mapped::new`); the operations that hand work to other threads (a mount, first stores) are
//! timed unpinned (see `Op::pinned`).

use std::process::{Command, Stdio};

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// SCHED_FIFO priority of the timed rounds.
const FIFO_PRIORITY: u32 = 50;

/// Whether and how the timed rounds are pinned.
pub struct Pin {
    plan: Result<Plan, String>,
    /// Pinned now.
    held: bool,
    /// Pinned at some time in the run.
    ever: bool,
}

/// What pinning sets, and what lifting it restores.
struct Plan {
    tid: String,
    cpu: usize,
    old_cpus: CpuSet,
    /// The thread's policy (as chrt(1) options) and priority when found.
    old_policy: (&'static str, u32),
    /// Whether SCHED_FIFO was refused, and why (then it is not asked again).
    fifo_refused: Option<String>,
}

impl Pin {
    /// Finds what to pin to; sets nothing yet.
    pub fn new() -> Pin {
        let plan = if !rustix::process::geteuid().is_root() { Err("not root".to_string()) } else { plan() };
        Pin { plan, held: false, ever: false }
    }

    /// Pins (`on`) or lifts the pin, when that changes anything.
    pub fn hold(&mut self, on: bool) {
        let Ok(p) = &mut self.plan else { return };
        if on == self.held {
            return;
        }
        if on {
            let mut one = CpuSet::new();
            one.set(p.cpu);
            if let Err(e) = sched_setaffinity(None, &one) {
                self.plan = Err(format!("sched_setaffinity: {e}"));
                return;
            }
            if p.fifo_refused.is_none() {
                if let Err(why) = chrt(&["-f", "-p", &FIFO_PRIORITY.to_string(), &p.tid]) {
                    p.fifo_refused = Some(why);
                }
            }
            (self.held, self.ever) = (true, true);
        } else {
            // A refused SCHED_FIFO left the policy as it was.
            if p.fifo_refused.is_none() {
                let (flag, prio) = p.old_policy;
                let _ = chrt(&[flag, "-p", &prio.to_string(), &p.tid]);
            }
            let _ = sched_setaffinity(None, &p.old_cpus);
            self.held = false;
        }
    }

    /// Whether the rounds ran pinned to a CPU.
    pub fn pinned(&self) -> bool {
        self.ever && self.plan.is_ok()
    }

    /// "pinned to CPU 1, SCHED_FIFO 50", or why not.
    pub fn describe(&self) -> String {
        match &self.plan {
            Err(why) => format!("not pinned, normal priority ({why})"),
            Ok(_) if !self.ever => "not pinned, normal priority".to_string(),
            Ok(p) => match &p.fifo_refused {
                None => format!("pinned to CPU {}, SCHED_FIFO {FIFO_PRIORITY}", p.cpu),
                Some(why) => format!("pinned to CPU {}, normal priority (SCHED_FIFO refused: {why})", p.cpu),
            },
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.hold(false);
    }
}

/// The CPU to pin to and what to restore afterwards.
fn plan() -> Result<Plan, String> {
    let old_cpus = sched_getaffinity(None).map_err(|e| format!("sched_getaffinity: {e}"))?;
    let cpu = (0..CpuSet::MAX_CPU).rev().find(|&c| old_cpus.is_set(c)).ok_or("no CPU to run on")?;
    let tid = rustix::thread::gettid().as_raw_nonzero().to_string();
    let old_policy = policy().ok_or("the thread's scheduling policy is unreadable")?;
    Ok(Plan { tid, cpu, old_cpus, old_policy, fifo_refused: None })
}

/// The calling thread's scheduling policy as chrt(1) options, and its real-time priority, from
/// /proc/thread-self/stat (fields 40 and 41).
fn policy() -> Option<(&'static str, u32)> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The fields after the command name, which may hold spaces, start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let prio: u32 = fields.get(40 - 3)?.parse().ok()?;
    let flag = match fields.get(41 - 3)?.parse::<u32>().ok()? {
        1 => "-f",
        2 => "-r",
        3 => "-b",
        5 => "-i",
        _ => "-o",
    };
    Some((flag, prio))
}

/// Runs chrt(1) with `args`; its complaint when it fails.
fn chrt(args: &[&str]) -> Result<(), String> {
    let out = Command::new("chrt")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("chrt: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err.lines().last().unwrap_or("chrt failed").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_of_this_thread_reads() {
        let (flag, prio) = policy().unwrap();
        assert!(["-o", "-f", "-r", "-b", "-i"].contains(&flag));
        assert!(prio <= 99);
    }
}
