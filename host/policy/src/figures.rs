//! What a plugin costs: CPU time per call (sampled) and the peak linear memory
//! of its instances, per tenant role, as metrics and in `/admin/plugins`.
//!
//! - **CPU** is read from the thread's CPU clock around one call in
//!   [`SAMPLE_EVERY`] (per thread, no shared counter): two clock reads cost
//!   about as much as a small call, so measuring every call would double it.
//! - **Memory** is recorded when an instance's linear memory grows (the store
//!   limiter sees every growth; nothing is read on the call path).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use wasmtime::{ResourceLimiter, StoreLimits};

/// One call in this many (per thread) has its CPU time read.
pub const SAMPLE_EVERY: u32 = 64;

/// The figures of one plugin for one tenant role.
#[derive(Debug)]
pub(crate) struct Figures {
    cpu_ns: AtomicU64,
    cpu_samples: AtomicU64,
    peak_memory: AtomicU64,
    cpu_histogram: Option<Histogram>,
    memory_gauge: Option<Gauge>,
}

impl Figures {
    pub(crate) fn new(cpu_histogram: Option<Histogram>, memory_gauge: Option<Gauge>) -> Self {
        Self {
            cpu_ns: AtomicU64::new(0),
            cpu_samples: AtomicU64::new(0),
            peak_memory: AtomicU64::new(0),
            cpu_histogram,
            memory_gauge,
        }
    }

    /// Figures that are kept but not exported (one-off instances).
    pub(crate) fn unlisted() -> Self {
        Self::new(None, None)
    }

    fn cpu(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.cpu_ns.fetch_add(ns, Ordering::Relaxed);
        self.cpu_samples.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = &self.cpu_histogram {
            h.observe(d.as_secs_f64());
        }
    }

    fn memory(&self, bytes: usize) {
        let b = bytes as u64;
        let v = i64::try_from(b).unwrap_or(i64::MAX);
        // The gauge is per plugin and role (every tenant): it only rises.
        if self.peak_memory.fetch_max(b, Ordering::Relaxed) < b
            && let Some(g) = &self.memory_gauge
            && g.get() < v
        {
            g.set(v);
        }
    }

    /// `used_by[].figures` of `/admin/plugins`.
    pub(crate) fn json(&self) -> serde_json::Value {
        let n = self.cpu_samples.load(Ordering::Relaxed);
        let avg = (n > 0).then(|| self.cpu_ns.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0);
        serde_json::json!({
            "cpu_per_call_us": avg.map(|v| (v * 100.0).round() / 100.0),
            "cpu_samples": n,
            "peak_memory_bytes": self.peak_memory.load(Ordering::Relaxed),
        })
    }

    /// Runs `f`, reading the thread's CPU clock around it on one call in
    /// [`SAMPLE_EVERY`].
    pub(crate) fn sampled<R>(&self, f: impl FnOnce() -> R) -> R {
        thread_local! {
            static CALLS: Cell<u32> = const { Cell::new(0) };
        }
        let sample = CALLS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n.is_multiple_of(SAMPLE_EVERY)
        });
        if !sample {
            return f();
        }
        let c0 = crate::isolation::thread_cpu();
        let r = f();
        if let (Some(a), Some(b)) = (c0, crate::isolation::thread_cpu()) {
            self.cpu(b.saturating_sub(a));
        }
        r
    }
}

/// The store limiter: wasmtime's limits, recording each memory growth it
/// allows in the plugin's [`Figures`].
pub(crate) struct PeakLimits {
    pub inner: StoreLimits,
    pub figures: std::sync::Arc<Figures>,
}

impl ResourceLimiter for PeakLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            self.figures.memory(desired);
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_in_sample_every_is_timed() {
        let f = Figures::unlisted();
        for _ in 0..SAMPLE_EVERY * 3 {
            f.sampled(|| std::hint::black_box(1 + 1));
        }
        assert_eq!(f.cpu_samples.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_peak_only_rises() {
        let f = Figures::unlisted();
        f.memory(1 << 16);
        f.memory(1 << 20);
        f.memory(1 << 17);
        assert_eq!(f.json()["peak_memory_bytes"], 1 << 20);
    }
}
