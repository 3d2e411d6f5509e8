//! How busy the machine was with *other* work while a run measured: CPU
//! time spent on every core during the window, minus what the server
//! processes (`--watch-pid`) and this client spent. A run that shares the
//! machine with a build or a test suite reports a high figure and the table
//! marks it noisy.

use std::sync::Mutex;
use std::time::Instant;

/// Other processes' CPU above this (% of one core) mark a run noisy.
pub const NOISY_PCT: f64 = 10.0;

/// Busy jiffies summed over every core (`/proc/stat` `cpu` line: everything
/// but idle and iowait).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy)
}

/// utime + stime of a process (all its threads), in jiffies.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant; no memory is passed.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A measuring window over the machine, the watched servers and this process.
#[derive(Debug)]
pub struct Window {
    start: Instant,
    machine: Option<u64>,
    ours: u64,
    pids: Vec<u32>,
}

fn ours(pids: &[u32]) -> u64 {
    let servers: u64 = pids
        .iter()
        .filter_map(|p| process_ticks(&p.to_string()))
        .sum();
    servers + process_ticks("self").unwrap_or(0)
}

impl Window {
    /// Starts watching (servers = `pids`).
    pub fn start(pids: &[u32]) -> Self {
        Self {
            start: Instant::now(),
            machine: machine_busy_ticks(),
            ours: ours(pids),
            pids: pids.to_vec(),
        }
    }

    /// Other processes' CPU during the window, in % of one core; `None` when
    /// `/proc` cannot be read.
    pub fn finish(&self) -> Option<f64> {
        let secs = self.start.elapsed().as_secs_f64();
        let machine = machine_busy_ticks()?.checked_sub(self.machine?)?;
        let ours = ours(&self.pids).saturating_sub(self.ours);
        let other = machine.saturating_sub(ours) as f64 / ticks_per_sec();
        (secs > 0.0).then(|| 100.0 * other / secs)
    }
}

static LAST: Mutex<Option<f64>> = Mutex::new(None);

/// Records the last window's figure (the scenario's measuring window).
pub fn record(pct: Option<f64>) {
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) = pct;
}

/// The figure recorded by the run, if any.
pub fn take() -> Option<f64> {
    LAST.lock().unwrap_or_else(|e| e.into_inner()).take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reads_the_machine_and_counts_this_process_as_ours() {
        let before = process_ticks("self").expect("own stat");
        let w = Window::start(&[]);
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 300 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(
            process_ticks("self").expect("own stat") > before,
            "the spin was counted"
        );
        assert!(w.finish().expect("proc readable") >= 0.0);
    }
}
