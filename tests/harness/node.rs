//! Node test scripts (`tests/js/*.test.mjs`) run from a Rust test: the npm
//! packages installed from the committed lockfile when missing, the script
//! run under `node --test` with its output echoed live, bounded in time, and
//! every named scenario checked in the TAP report.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo_root;

/// The `node` binary (`$NODE`, else `node` on the `PATH`).
pub fn node() -> String {
    std::env::var("NODE").unwrap_or_else(|_| "node".to_owned())
}

/// `npm ci` in tests/js when one of `packages` is not installed.
pub fn ensure_node_modules(packages: &[&str]) {
    let js = repo_root().join("tests/js");
    let installed = |p: &&str| {
        js.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    };
    if packages.iter().all(installed) {
        return;
    }
    let st = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&js)
        .status()
        .expect("run npm ci (is npm installed?)");
    assert!(st.success(), "npm ci in tests/js failed: {st}");
}

/// Echoes `r`'s lines (to stdout or stderr) as they come and returns them all.
fn tee(r: impl Read + Send + 'static, to_stderr: bool) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    })
}

/// Runs `tests/js/{script}` with `node --test` (TAP reporter) from the repo
/// root with `env`, and panics unless it exits 0 within `limit` with
/// `# fail 0` and every one of `scenarios` (the start of a test's name)
/// reported `ok`. `context` is appended to a failure (e.g. gateway logs).
/// Returns the script's stdout.
pub fn run_node_tests(
    script: &str,
    env: &[(&str, &str)],
    limit: Duration,
    scenarios: &[&str],
    context: impl Fn() -> String,
) -> String {
    let root = repo_root();
    let mut cmd = Command::new(node());
    cmd.args(["--test", "--test-reporter=tap"])
        .arg(root.join("tests/js").join(script))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("run node --test tests/js/{script}: {e}"));
    let out = tee(child.stdout.take().expect("stdout"), false);
    let err = tee(child.stderr.take().expect("stderr"), true);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for node") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "{script} exceeded {limit:?}:\n{stdout}\n{stderr}\n{}",
            context()
        );
    };
    assert!(
        status.success(),
        "{script} failed ({status}):\n{stdout}\n{stderr}\n{}",
        context()
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
    for s in scenarios {
        assert!(
            stdout.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with("ok ") && l.contains(&format!(" - {s}"))
            }),
            "scenario {s:?} did not pass:\n{stdout}"
        );
    }
    stdout
}
