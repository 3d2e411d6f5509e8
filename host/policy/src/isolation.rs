//! Plugin isolation between tenants: where a call runs, and how much of the
//! process one tenant's plugins may hold.
//!
//! Rules (each has a named test below):
//! - **Fast calls run inline** on the connection's task: a call is a few
//!   microseconds, and handing it to another thread costs ~12 µs.
//! - **Slow callers run off the event loop.** A caller (tenant + role +
//!   plugin) whose calls burn at least [`SLOW_CALL`] of CPU is slow for
//!   [`SLOW_FOR`], renewed by every further slow call (CPU time, checked once
//!   a call was long on the wall clock, so preemption on a loaded machine does
//!   not make a fast plugin slow). A slow caller's calls
//!   run under `tokio::task::block_in_place`: the worker hands its queue to
//!   another thread first, so other tenants' connections go on being served
//!   while the call runs. The price of discovery is the first slow call per
//!   worker, bounded by the call deadline.
//! - **A tenant's off-loop calls are bounded** by `plugins.max_concurrent_calls`;
//!   one more is refused at once as busy (the role's `on_error` decides), so a
//!   slow tenant cannot occupy every thread.
//! - **A tenant's live instances are bounded** by `plugins.max_instances`
//!   (idle pooled ones and open merge documents included), so one tenant cannot
//!   take the whole instance pool from the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use quanta::Instant;

/// A call at least this long marks its caller slow.
pub const SLOW_CALL: Duration = Duration::from_millis(1);
/// How long a slow mark lasts after the last slow call.
pub const SLOW_FOR: Duration = Duration::from_secs(10);

/// One tenant's share of the plugin runtime, shared by all its roles and
/// plugin versions (it outlives reloads).
#[derive(Debug)]
pub struct TenantBudget {
    off_loop: AtomicU32,
    max_off_loop: u32,
    instances: AtomicU32,
    max_instances: u32,
}

impl TenantBudget {
    /// A budget of `max_calls` concurrent off-loop calls and `max_instances`
    /// live instances (each at least 1).
    pub fn new(max_calls: u32, max_instances: u32) -> Self {
        Self {
            off_loop: AtomicU32::new(0),
            max_off_loop: max_calls.max(1),
            instances: AtomicU32::new(0),
            max_instances: max_instances.max(1),
        }
    }

    /// No practical bound (for one-off instances outside any tenant).
    pub fn unbounded() -> Self {
        Self::new(u32::MAX, u32::MAX)
    }

    /// Whether this budget was made with these bounds.
    pub fn has_bounds(&self, max_calls: u32, max_instances: u32) -> bool {
        self.max_off_loop == max_calls.max(1) && self.max_instances == max_instances.max(1)
    }

    /// Live instances of the tenant now.
    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Off-loop calls of the tenant running now.
    pub fn off_loop_calls(&self) -> u32 {
        self.off_loop.load(Ordering::Relaxed)
    }

    /// The instance limit.
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }

    /// A ticket for one more live instance, or `None` at the limit. The ticket
    /// lives as long as the instance.
    pub fn instance(self: &Arc<Self>) -> Option<InstanceTicket> {
        take(&self.instances, self.max_instances).then(|| InstanceTicket(self.clone()))
    }

    fn off_loop(&self) -> Option<OffLoopPermit<'_>> {
        take(&self.off_loop, self.max_off_loop).then(|| OffLoopPermit(self))
    }
}

/// Increments `n` unless it is at `max`.
fn take(n: &AtomicU32, max: u32) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
        (v < max).then_some(v + 1)
    })
    .is_ok()
}

/// Held by a live instance; gives the slot back when dropped.
#[derive(Debug)]
pub struct InstanceTicket(Arc<TenantBudget>);

impl Drop for InstanceTicket {
    fn drop(&mut self) {
        self.0.instances.fetch_sub(1, Ordering::AcqRel);
    }
}

struct OffLoopPermit<'a>(&'a TenantBudget);

impl Drop for OffLoopPermit<'_> {
    fn drop(&mut self) {
        self.0.off_loop.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The tenant is at its limit of concurrent off-loop calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Where one caller's calls run, learnt from how long they take.
#[derive(Debug)]
pub struct Placement {
    budget: Arc<TenantBudget>,
    /// Nanoseconds (on the [`origin`] clock) until which the caller counts as
    /// slow; 0 = fast.
    slow_until: AtomicU64,
    /// A call took long on the wall clock: the next one measures its CPU time.
    suspect: AtomicBool,
}

/// A fixed origin so instants fit in an `AtomicU64`.
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn nanos(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX)
}

impl Placement {
    /// A placement drawing on `budget`, starting fast.
    pub fn new(budget: Arc<TenantBudget>) -> Self {
        let _ = origin();
        Self {
            budget,
            slow_until: AtomicU64::new(0),
            suspect: AtomicBool::new(false),
        }
    }

    /// The tenant budget.
    pub fn budget(&self) -> &Arc<TenantBudget> {
        &self.budget
    }

    /// Whether calls made at `now` run off the event loop.
    pub fn is_slow(&self, now: Instant) -> bool {
        nanos(now) < self.slow_until.load(Ordering::Relaxed)
    }

    /// Runs `f` inline or, for a slow caller on a multi-threaded runtime,
    /// under `block_in_place`; `Err(Busy)` without running it when the tenant
    /// already has its limit of off-loop calls.
    ///
    /// Slowness is judged by the CPU time a call burns, not its wall time (a
    /// fast call on a loaded machine can take long when its thread is
    /// preempted): a call whose wall time reaches [`SLOW_CALL`] makes the
    /// caller *suspect*, and the next call reads the thread's CPU clock around
    /// itself; at least [`SLOW_CALL`] of CPU marks the caller slow, less clears
    /// the suspicion. Calls of a slow caller are measured the same way and
    /// renew the mark only while they stay slow. Fast callers never read the
    /// CPU clock.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> Result<R, Busy> {
        let start = Instant::now();
        let slow = self.is_slow(start);
        let measure = slow || self.suspect.load(Ordering::Relaxed);
        let (r, cpu) = if slow && can_block_in_place() {
            let _permit = self.budget.off_loop().ok_or(Busy)?;
            // `block_in_place` runs `f` on this thread: its CPU clock is `f`'s.
            tokio::task::block_in_place(|| timed_cpu(measure, f))
        } else {
            timed_cpu(measure, f)
        };
        let end = Instant::now();
        let wall = end.saturating_duration_since(start);
        match cpu {
            Some(cpu) => {
                self.suspect.store(false, Ordering::Relaxed);
                if cpu >= SLOW_CALL {
                    self.slow_until.store(
                        nanos(end).saturating_add(SLOW_FOR.as_nanos() as u64),
                        Ordering::Relaxed,
                    );
                }
            }
            None if wall >= SLOW_CALL => self.suspect.store(true, Ordering::Relaxed),
            None => {}
        }
        Ok(r)
    }
}

/// Runs `f`, with the CPU time this thread spent in it when `measure` (the
/// wall time where the thread clock cannot be read).
fn timed_cpu<R>(measure: bool, f: impl FnOnce() -> R) -> (R, Option<Duration>) {
    if !measure {
        return (f(), None);
    }
    let (c0, w0) = (thread_cpu(), Instant::now());
    let r = f();
    let cpu = match (c0, thread_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => w0.elapsed(),
    };
    (r, Some(cpu))
}

/// This thread's CPU clock.
pub(crate) fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass, which lives on
    // this stack frame for the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// `block_in_place` needs a multi-threaded runtime (it panics on a
/// current-thread one; outside any runtime it is not needed).
fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns `d` of this thread's CPU (not wall) time.
    fn spin(d: Duration) {
        let t = thread_cpu().expect("thread CPU clock");
        while thread_cpu().expect("thread CPU clock") - t < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn fast_calls_stay_inline() {
        let p = Placement::new(Arc::new(TenantBudget::new(1, 1)));
        for _ in 0..100 {
            p.run(|| ()).unwrap();
        }
        assert!(!p.is_slow(Instant::now()));
    }

    #[test]
    fn a_long_call_makes_its_caller_suspect_and_a_cpu_heavy_one_slow_for_a_while() {
        let p = Placement::new(Arc::new(TenantBudget::new(1, 1)));
        p.run(|| spin(SLOW_CALL * 2)).unwrap();
        assert!(!p.is_slow(Instant::now()), "one long call is only suspect");
        p.run(|| spin(SLOW_CALL * 2)).unwrap();
        let now = Instant::now();
        assert!(p.is_slow(now), "its CPU time confirmed it");
        assert!(!p.is_slow(now + SLOW_FOR + Duration::from_millis(10)));
    }

    #[test]
    fn a_call_long_on_the_wall_clock_but_not_in_cpu_does_not_make_it_slow() {
        let p = Placement::new(Arc::new(TenantBudget::new(1, 1)));
        // Sleeping: the wall clock runs, the thread's CPU clock does not
        // (as when a fast call's thread is preempted).
        for _ in 0..3 {
            p.run(|| std::thread::sleep(SLOW_CALL * 3)).unwrap();
        }
        assert!(!p.is_slow(Instant::now()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_callers_run_off_the_event_loop_so_other_tasks_go_on() {
        let p = Arc::new(Placement::new(Arc::new(TenantBudget::new(4, 1))));
        p.run(|| spin(SLOW_CALL * 2)).unwrap();
        p.run(|| spin(SLOW_CALL * 2)).unwrap();
        // Both workers run a slow call; a third task is still served meanwhile.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let mut slow = Vec::new();
        for _ in 0..2 {
            let (p, rx) = (p.clone(), rx.clone());
            slow.push(tokio::spawn(async move {
                // Blocks until the other task has run: deadlocks if inline.
                p.run(|| rx.lock().recv_timeout(Duration::from_secs(20)))
                    .unwrap()
            }));
        }
        let other = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
            tx.send(()).unwrap();
        });
        other.await.unwrap();
        for s in slow {
            assert!(
                s.await.unwrap().is_ok(),
                "the slow calls were released by the other task"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn off_loop_calls_beyond_the_tenant_limit_are_refused_as_busy() {
        let p = Arc::new(Placement::new(Arc::new(TenantBudget::new(1, 1))));
        p.run(|| spin(SLOW_CALL * 2)).unwrap();
        p.run(|| spin(SLOW_CALL * 2)).unwrap();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let p2 = p.clone();
        let first = tokio::spawn(async move {
            p2.run(move || {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
        });
        entered_rx.await.unwrap();
        assert_eq!(p.budget().off_loop_calls(), 1);
        assert_eq!(p.run(|| ()), Err(Busy));
        release_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(p.budget().off_loop_calls(), 0);
    }

    #[test]
    fn instances_beyond_the_tenant_limit_are_refused_and_tickets_give_them_back() {
        let b = Arc::new(TenantBudget::new(1, 2));
        let t1 = b.instance().unwrap();
        let _t2 = b.instance().unwrap();
        assert!(b.instance().is_none());
        drop(t1);
        assert_eq!(b.instances(), 1);
        assert!(b.instance().is_some());
    }
}
