//! Fuzzing on stable Rust, without libFuzzer or nightly: every target draws
//! inputs from a seeded generator (random, grammar-built and mutated), runs
//! the public API on each one under [`std::panic::catch_unwind`], and checks
//! round-trip and consistency properties. Input `i` of a target depends only
//! on `(seed, target, i)`, so any failure is reproduced by
//! `switchyard-fuzz --target T --seed S --start i --iters 1`.
//!
//! See `docs/fuzzing.md` and `scripts/fuzz.sh`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

pub mod inputs;
pub mod targets;

/// A small, fast, seedable generator (SplitMix64). Fixed forever, so a seed
/// printed by one build reproduces the same inputs in another.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u32) -> bool {
        (self.next_u64() % 100) < u64::from(percent)
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// A length skewed towards small values, at most `max`.
    pub fn len(&mut self, max: usize) -> usize {
        match self.below(4) {
            0 => self.below(max.min(4) + 1),
            1 | 2 => self.below(max.min(32) + 1),
            _ => self.below(max + 1),
        }
    }

    /// An integer near the edges: 0, 1, powers of two and their neighbours,
    /// `u64::MAX`, or a random one.
    pub fn interesting_u64(&mut self) -> u64 {
        match self.below(6) {
            0 => *self.pick(&[0, 1, 2, 127, 128, 255, 256, 65535, 65536, u64::MAX]),
            1 => {
                let p = 1u64 << self.below(64);
                match self.below(3) {
                    0 => p.wrapping_sub(1),
                    1 => p,
                    _ => p.wrapping_add(1),
                }
            }
            2 => *self.pick(&[
                i64::MAX as u64,
                i64::MAX as u64 + 1,
                u32::MAX as u64,
                u32::MAX as u64 + 1,
            ]),
            3 => self.below(16) as u64,
            _ => self.next_u64(),
        }
    }
}

/// The generator for input `index` of `target` in a run seeded with `seed`.
pub fn input_rng(seed: u64, target: &str, index: u64) -> Rng {
    // FNV-1a of the name, then two SplitMix rounds over (seed, name, index).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut r = Rng::new(seed ^ h.rotate_left(17));
    let a = r.next_u64();
    Rng::new(a ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03))
}

/// One fuzz target: a generator of inputs and a check that runs the API.
pub trait Target {
    /// What one generated input is.
    type Input: std::fmt::Debug;
    /// Short name, used on the command line.
    fn name(&self) -> &'static str;
    /// What is exercised, for the report.
    fn about(&self) -> &'static str;
    /// Inputs in a full run.
    fn full_iters(&self) -> u64;
    /// Inputs in a `--short` run.
    fn short_iters(&self) -> u64;
    /// Draws one input.
    fn generate(&self, rng: &mut Rng) -> Self::Input;
    /// The input as the API sees it (printed as hex when it fails).
    fn bytes(&self, input: &Self::Input) -> Vec<u8>;
    /// Runs the API on the input. A panic is caught by the harness; `Err` is a
    /// property that did not hold.
    fn check(&self, input: &Self::Input) -> Result<(), String>;
}

/// What went wrong with one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The API panicked.
    Panic,
    /// A property did not hold.
    Property,
    /// The generator itself panicked (a harness bug).
    Generator,
}

/// One failing input.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Index of the input in the run.
    pub index: u64,
    /// Panic or property.
    pub kind: FailureKind,
    /// The panic message (with its location) or the property's message.
    pub message: String,
    /// The input as the API saw it.
    pub input: Vec<u8>,
    /// The input's `Debug`, cut at a few KiB.
    pub debug: String,
}

/// What a run of one target did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Target name.
    pub name: &'static str,
    /// Inputs run.
    pub inputs: u64,
    /// Inputs that panicked.
    pub panics: u64,
    /// Inputs whose properties did not hold.
    pub property_failures: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether the run stopped at its time cap before `iters`.
    pub capped: bool,
    /// The first few failures, in full.
    pub failures: Vec<Failure>,
}

/// How many failures a report keeps in full.
pub const KEEP_FAILURES: usize = 5;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs a panic hook that records the message and location of a panic on
/// a fuzzing thread instead of printing it (the report prints it once, with
/// the input). Other threads keep the default hook.
pub fn install_panic_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let fuzzing = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("fuzz-"));
        if fuzzing {
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
        } else {
            default(info);
        }
    }));
}

fn take_panic(payload: &(dyn std::any::Any + Send)) -> String {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned())
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Runs inputs `start..start + iters` of `target`, stopping early at `cap`.
pub fn run_target<T: Target>(
    target: &T,
    seed: u64,
    start: u64,
    iters: u64,
    cap: Option<Duration>,
) -> Report {
    let began = Instant::now();
    let mut report = Report {
        name: target.name(),
        inputs: 0,
        panics: 0,
        property_failures: 0,
        elapsed: Duration::ZERO,
        capped: false,
        failures: Vec::new(),
    };
    for index in start..start.saturating_add(iters) {
        if let Some(cap) = cap
            && index % 256 == 0
            && began.elapsed() >= cap
        {
            report.capped = true;
            break;
        }
        let mut rng = input_rng(seed, target.name(), index);
        let input = match panic::catch_unwind(AssertUnwindSafe(|| target.generate(&mut rng))) {
            Ok(input) => input,
            Err(payload) => {
                report.inputs += 1;
                report.panics += 1;
                if report.failures.len() < KEEP_FAILURES {
                    report.failures.push(Failure {
                        index,
                        kind: FailureKind::Generator,
                        message: take_panic(payload.as_ref()),
                        input: Vec::new(),
                        debug: String::new(),
                    });
                }
                continue;
            }
        };
        report.inputs += 1;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| target.check(&input)));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(message)) => {
                report.property_failures += 1;
                Some((FailureKind::Property, message))
            }
            Err(payload) => {
                report.panics += 1;
                Some((FailureKind::Panic, take_panic(payload.as_ref())))
            }
        };
        if let Some((kind, message)) = failure
            && report.failures.len() < KEEP_FAILURES
        {
            report.failures.push(Failure {
                index,
                kind,
                message,
                input: target.bytes(&input),
                debug: cut(format!("{input:?}"), 4096),
            });
        }
    }
    report.elapsed = began.elapsed();
    report
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Report {
    /// Whether every input passed.
    pub fn passed(&self) -> bool {
        self.panics == 0 && self.property_failures == 0
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.inputs as f64 / secs
        } else {
            0.0
        };
        format!(
            "{:<10} inputs {:>9}  panics {}  property failures {}  time {:>6.1}s  ({:.0}/s){}",
            self.name,
            self.inputs,
            self.panics,
            self.property_failures,
            secs,
            rate,
            if self.capped {
                "  [stopped at the time cap]"
            } else {
                ""
            }
        )
    }

    /// The failures in full, with the command that reproduces each one.
    pub fn details(&self, seed: u64) -> String {
        let mut out = String::new();
        for f in &self.failures {
            let _ = writeln!(
                out,
                "--- {} {:?} at input {} (reproduce: scripts/fuzz.sh --target {} --seed {seed} --start {} --iters 1)",
                self.name, f.kind, f.index, self.name, f.index
            );
            let _ = writeln!(out, "{}", f.message.trim_end());
            let _ = writeln!(
                out,
                "input ({} bytes, hex): {}",
                f.input.len(),
                hex(&f.input)
            );
            let _ = writeln!(out, "input (debug): {}", f.debug);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics on inputs divisible by 7, breaks a property on those divisible by 5.
    struct Trap;

    impl Target for Trap {
        type Input = u64;
        fn name(&self) -> &'static str {
            "trap"
        }
        fn about(&self) -> &'static str {
            "a target that fails on purpose"
        }
        fn full_iters(&self) -> u64 {
            100
        }
        fn short_iters(&self) -> u64 {
            10
        }
        fn generate(&self, rng: &mut Rng) -> u64 {
            rng.below(1000) as u64
        }
        fn bytes(&self, input: &u64) -> Vec<u8> {
            input.to_be_bytes().to_vec()
        }
        fn check(&self, input: &u64) -> Result<(), String> {
            if input.is_multiple_of(7) {
                let v: Vec<u8> = Vec::new();
                let _ = v[*input as usize];
            }
            if input.is_multiple_of(5) {
                return Err(format!("{input} is a multiple of 5"));
            }
            Ok(())
        }
    }

    #[test]
    fn panics_and_properties_are_caught_reported_and_reproducible() {
        install_panic_hook();
        let r = std::thread::Builder::new()
            .name("fuzz-test".into())
            .spawn(|| run_target(&Trap, 42, 0, 2000, None))
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(r.inputs, 2000);
        assert!(r.panics > 100, "{}", r.summary());
        assert!(r.property_failures > 100, "{}", r.summary());
        assert!(!r.passed());
        let first = &r.failures[0];
        assert!(
            first.kind != FailureKind::Panic || first.message.contains("index out of bounds"),
            "{}",
            first.message
        );
        let details = r.details(42);
        assert!(details.contains("--seed 42 --start"), "{details}");
        // The same index gives the same input, alone.
        let again = run_target(&Trap, 42, first.index, 1, None);
        assert_eq!(again.failures[0].input, first.input);
    }

    #[test]
    fn inputs_depend_only_on_seed_target_and_index() {
        let a: Vec<u64> = (0..4).map(|i| input_rng(1, "x", i).next_u64()).collect();
        let b: Vec<u64> = (0..4).map(|i| input_rng(1, "x", i).next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(
            input_rng(1, "x", 0).next_u64(),
            input_rng(2, "x", 0).next_u64()
        );
        assert_ne!(
            input_rng(1, "x", 0).next_u64(),
            input_rng(1, "y", 0).next_u64()
        );
        // Pinned: a seed printed by one build must mean the same inputs in the next.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }
}
