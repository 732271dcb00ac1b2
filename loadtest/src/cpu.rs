//! Machine time per operation (DESIGN section 10): the CPU time, user + system, that each
//! process involved spent while a run was driven, in core-seconds, divided by the operations
//! the run answered. Read before and after the driven phase from /proc/PID/stat (a process,
//! all its threads, living and exited), /proc/self/task/TID/stat (some threads of this process)
//! and /proc/stat (every core of the machine, whoever used it).
//!
//! Linux counts these times in clock ticks (`USER_HZ`, 10 ms), so a measure is good to about
//! one tick per process: ample over a run of seconds, coarse below one. A process that cannot
//! be read at either end is reported as not measured, never as zero.

use std::fmt;
use std::time::Instant;

/// Clock ticks per second of /proc's times, when the system cannot be asked.
const CLOCK_TICKS_PER_S_DEFAULT: u64 = 100;
/// Threads of this process looked at when summing some of them.
pub const THREADS_SCANNED_MAX: usize = 4_096;

/// Whose CPU time a probe reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This process: the load generator, and in `engines` the engines it drives.
    ThisProcess,
    /// This process without its threads whose names start with one of the prefixes (the load
    /// generator beside a server it runs in process).
    ThisProcessExcept(&'static [&'static str]),
    /// The threads of this process whose names start with one of the prefixes.
    Threads(&'static [&'static str]),
    /// Another process.
    Process(u32),
    /// Every core of the machine: the busy time in /proc/stat.
    Machine,
}

/// A labelled source, e.g. ("tianji serve pid 4242", Process(4242)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub label: String,
    pub source: Source,
}

impl Probe {
    pub fn new(label: impl Into<String>, source: Source) -> Self {
        Probe { label: label.into(), source }
    }

    /// Whether this probe counts toward the total of the processes (the machine does not: it
    /// holds them all, and whatever else ran).
    pub fn is_process(&self) -> bool {
        self.source != Source::Machine
    }
}

/// The CPU time of one probe over the driven phase.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuReading {
    pub label: String,
    /// Core-seconds used; `None` when the source could not be read at both ends.
    pub cpu_s: Option<f64>,
    /// Core-seconds per wall second: how many cores it kept busy on average.
    pub cores: Option<f64>,
    pub whole_machine: bool,
}

impl fmt::Display for CpuReading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.cpu_s, self.cores) {
            (Some(cpu_s), Some(cores)) => write!(f, "{} {cpu_s:.2} s ({cores:.2} cores)", self.label),
            _ => write!(f, "{} not measured", self.label),
        }
    }
}

/// Reads every probe now, and again at `stop`.
pub struct CpuMeter {
    probes: Vec<Probe>,
    before: Vec<Option<u64>>,
    started: Instant,
}

impl CpuMeter {
    pub fn start(probes: Vec<Probe>) -> Self {
        let before = probes.iter().map(|probe| ticks(&probe.source)).collect();
        CpuMeter { probes, before, started: Instant::now() }
    }

    pub fn stop(self) -> Vec<CpuReading> {
        let wall_s = self.started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
        let per_s = clock_ticks_per_s() as f64;
        self.probes
            .into_iter()
            .zip(self.before)
            .map(|(probe, before)| {
                let after = ticks(&probe.source);
                let cpu_s = match (before, after) {
                    (Some(before), Some(after)) => Some(after.saturating_sub(before) as f64 / per_s),
                    _ => None,
                };
                CpuReading {
                    whole_machine: !probe.is_process(),
                    label: probe.label,
                    cores: cpu_s.map(|cpu_s| cpu_s / wall_s),
                    cpu_s,
                }
            })
            .collect()
    }
}

/// utime + stime, in clock ticks, from the text of /proc/PID/stat or /proc/PID/task/TID/stat.
/// The name in parentheses may hold spaces and parentheses: fields are counted after the last
/// ')'.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); the first after the name is field 3.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// The busy ticks of all cores from the text of /proc/stat: user, nice, system, irq, softirq
/// and steal (guest time is already inside user); idle and iowait are not busy.
pub fn parse_machine_busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, rest @ ..] = values.as_slice() else {
        return None;
    };
    let steal = rest.first().copied().unwrap_or(0);
    Some(user + nice + system + irq + softirq + steal)
}

fn read_ticks(path: &str) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(path).ok()?)
}

/// The summed ticks of this process's threads whose names match one of `prefixes`.
fn thread_ticks(prefixes: &[&str]) -> Option<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total = 0;
    for task in tasks.take(THREADS_SCANNED_MAX) {
        let path = task.ok()?.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue; // The thread ended meanwhile.
        };
        if prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            total += parse_stat_ticks(&std::fs::read_to_string(path.join("stat")).ok()?)?;
        }
    }
    Some(total)
}

fn ticks(source: &Source) -> Option<u64> {
    match source {
        Source::ThisProcess => read_ticks("/proc/self/stat"),
        Source::ThisProcessExcept(prefixes) => {
            // The threads first: the process, read after, holds at least what they had.
            let threads = thread_ticks(prefixes)?;
            Some(read_ticks("/proc/self/stat")?.saturating_sub(threads))
        }
        Source::Threads(prefixes) => thread_ticks(prefixes),
        Source::Process(pid) => read_ticks(&format!("/proc/{pid}/stat")),
        Source::Machine => parse_machine_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?),
    }
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(CLOCK_TICKS_PER_S_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_user_plus_system_ticks() {
        let line = "4242 (tianji) S 1 4242 4242 0 -1 4194560 1503 0 0 0 731 269 0 0 20 0 9 0 106501 \
                    3133440 362 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(line), Some(1_000));
    }

    #[test]
    fn names_with_spaces_and_parentheses_do_not_shift_the_fields() {
        let line = "77 (actix-server (wo) S) R 1 77 77 0 -1 0 0 0 0 0 12 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat_ticks(line), Some(15));
    }

    #[test]
    fn short_or_garbled_stat_lines_give_nothing() {
        assert_eq!(parse_stat_ticks(""), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 many 3 0"), None);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  115885 10 19377 75402 736 5 175 782 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n";
        assert_eq!(parse_machine_busy_ticks(stat), Some(115_885 + 10 + 19_377 + 5 + 175 + 782));
        assert_eq!(parse_machine_busy_ticks("cpu  1 2 3 4 5 6 7\n"), Some(1 + 2 + 3 + 6 + 7));
        assert_eq!(parse_machine_busy_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None, "only the all-cores line");
        assert_eq!(parse_machine_busy_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn this_process_is_measured_while_it_works() {
        let meter = CpuMeter::start(vec![
            Probe::new("self", Source::ThisProcess),
            Probe::new("nobody", Source::Process(u32::MAX)),
            Probe::new("machine", Source::Machine),
        ]);
        // Spin until this process has used 10 ticks (however busy the machine is), at most 10 s.
        let first = ticks(&Source::ThisProcess).expect("this process is readable");
        let give_up = Instant::now() + std::time::Duration::from_secs(10);
        while ticks(&Source::ThisProcess).is_some_and(|now| now < first + 10) && Instant::now() < give_up {
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
        let readings = meter.stop();
        let own = readings[0].cpu_s.expect("this process is readable");
        let ten_ticks_s = 10.0 / clock_ticks_per_s() as f64;
        assert!(own >= ten_ticks_s, "spun {ten_ticks_s} s of CPU but measured {own} s");
        assert!(readings[0].cores.is_some_and(|cores| cores > 0.0));
        assert_eq!(readings[1].cpu_s, None, "an absent process is not measured, not zero");
        assert_eq!(readings[1].to_string(), "nobody not measured");
        assert!(readings[2].whole_machine && readings[2].cpu_s.expect("machine is readable") > 0.0);
    }
}
