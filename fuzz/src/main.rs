//! `switchyard-fuzz`: runs the fuzz targets (see `docs/fuzzing.md`).
//!
//! ```text
//! switchyard-fuzz [--short] [--seed N] [--target NAME]... [--iters N] [--start I] [--max-secs S]
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_fuzz::targets::{self, NAMES};
use switchyard_fuzz::{Report, Target, install_panic_hook, run_target};

/// Seed of `--short` runs (the test command), so they are the same every time.
const SHORT_SEED: u64 = 0x5317_c4a2_d00d_f00d;
/// Stack of the fuzzing thread: what a tokio worker gets by default.
const STACK: usize = 2 << 20;

#[derive(Debug, Clone)]
struct Args {
    short: bool,
    seed: Option<u64>,
    targets: Vec<String>,
    iters: Option<u64>,
    start: u64,
    max_secs: Option<f64>,
}

fn usage() -> &'static str {
    "usage: switchyard-fuzz [--short] [--seed N] [--target NAME]... [--iters N] [--start I] [--max-secs S] [--list]\n\
     \n\
     --short       the test command's run (fixed seed, fewer inputs, capped at --max-secs per target)\n\
     --seed N      seed (decimal or 0x hex; default: FUZZ_SEED, else fixed for --short, else from the clock)\n\
     --target T    run only T (repeatable): protocol, statepatch, config, handshake, lww\n\
     --iters N     inputs per target (default: the target's full or short count)\n\
     --start I     first input index (with --iters 1: reproduce one input)\n\
     --max-secs S  stop each target after S seconds (default: 5 with --short, none otherwise)\n\
     --list        print the targets and exit"
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    r.map_err(|e| format!("bad number {s:?}: {e}"))
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        short: false,
        seed: None,
        targets: Vec::new(),
        iters: None,
        start: 0,
        max_secs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--short" => a.short = true,
            "--seed" => a.seed = Some(parse_u64(&value("--seed")?)?),
            "--target" => {
                let t = value("--target")?;
                if !NAMES.contains(&t.as_str()) {
                    return Err(format!(
                        "unknown target {t:?} (targets: {})",
                        NAMES.join(", ")
                    ));
                }
                a.targets.push(t);
            }
            "--iters" => a.iters = Some(parse_u64(&value("--iters")?)?),
            "--start" => a.start = parse_u64(&value("--start")?)?,
            "--max-secs" => {
                let v = value("--max-secs")?;
                a.max_secs = Some(
                    v.parse()
                        .map_err(|e| format!("bad --max-secs {v:?}: {e}"))?,
                );
            }
            "--list" => {
                println!("{}", NAMES.join("\n"));
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(Some(a))
}

fn run_one<T: Target>(t: &T, args: &Args, seed: u64, cap: Option<Duration>) -> Report {
    let iters = args.iters.unwrap_or(if args.short {
        t.short_iters()
    } else {
        t.full_iters()
    });
    println!(
        "  {:<10} {} ({} inputs from {})",
        t.name(),
        t.about(),
        iters,
        args.start
    );
    run_target(t, seed, args.start, iters, cap)
}

fn run_named(name: &str, args: &Args, seed: u64, cap: Option<Duration>) -> Option<Report> {
    Some(match name {
        "protocol" => run_one(&targets::protocol::Protocol, args, seed, cap),
        "statepatch" => run_one(&targets::statepatch::Patches, args, seed, cap),
        "config" => run_one(&targets::config::ConfigLoader::default(), args, seed, cap),
        "handshake" => run_one(&targets::handshake::Handshake, args, seed, cap),
        "lww" => run_one(&targets::lww::Lww, args, seed, cap),
        _ => return None,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = args
        .seed
        .or_else(|| {
            std::env::var("FUZZ_SEED")
                .ok()
                .and_then(|s| parse_u64(&s).ok())
        })
        .unwrap_or_else(|| {
            if args.short {
                SHORT_SEED
            } else {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }
        });
    let cap = args
        .max_secs
        .or(args.short.then_some(5.0))
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64);
    let names: Vec<String> = if args.targets.is_empty() {
        NAMES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.targets.clone()
    };
    println!(
        "switchyard-fuzz: seed {seed} (0x{seed:016x}), mode {}, {} target(s){}",
        if args.short { "short" } else { "full" },
        names.len(),
        cap.map_or(String::new(), |c| format!(
            ", at most {:.0}s each",
            c.as_secs_f64()
        ))
    );
    install_panic_hook();
    let began = Instant::now();
    let mut reports = Vec::new();
    for name in &names {
        // A named thread per target: the panic hook stays quiet on it, and a
        // stack overflow (which aborts) names the target it happened in.
        let thread_name = format!("fuzz-{name}");
        let handle = std::thread::Builder::new()
            .name(thread_name)
            .stack_size(STACK)
            .spawn({
                let name = name.clone();
                let args = args.clone();
                move || run_named(&name, &args, seed, cap)
            });
        let report = match handle.map(|h| h.join()) {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => continue,
            Ok(Err(_)) | Err(_) => {
                eprintln!("switchyard-fuzz: the {name} thread died");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", report.summary());
        if !report.passed() {
            print!("{}", report.details(seed));
        }
        reports.push(report);
    }
    let inputs: u64 = reports.iter().map(|r| r.inputs).sum();
    let panics: u64 = reports.iter().map(|r| r.panics).sum();
    let props: u64 = reports.iter().map(|r| r.property_failures).sum();
    println!(
        "switchyard-fuzz: {} target(s), {inputs} inputs, {panics} panics, {props} property failures, {:.1}s (seed {seed})",
        reports.len(),
        began.elapsed().as_secs_f64()
    );
    if panics + props > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
