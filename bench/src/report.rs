//! Turns JSON result lines into markdown tables, one per case, with ratios
//! against the case's reference server, and splices them into a document
//! between `<!-- bench:start -->` and `<!-- bench:end -->`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};

use crate::load::NOISY_PCT;
use crate::stats::{RunResult, fmt_us};

const START: &str = "<!-- bench:start -->";
const END: &str = "<!-- bench:end -->";

/// The markers of a named section (`--section docs`: `<!-- bench:docs:start -->`).
fn markers(section: Option<&str>) -> (String, String) {
    match section {
        Some(name) => (
            format!("<!-- bench:{name}:start -->"),
            format!("<!-- bench:{name}:end -->"),
        ),
        None => (START.to_string(), END.to_string()),
    }
}

/// Options of `report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// JSON-lines result files.
    #[arg(required = true)]
    pub results: Vec<String>,
    /// Text put above the tables (e.g. machine and date).
    #[arg(long, default_value = "")]
    pub preamble: String,
    /// Write the tables into this markdown file between the bench markers.
    #[arg(long)]
    pub update: Option<String>,
    /// With --update: use the markers `<!-- bench:NAME:start/end -->` instead
    /// (another script's tables in the same document).
    #[arg(long)]
    pub section: Option<String>,
}

/// Runs `report`.
pub fn run(args: &ReportArgs) -> Result<()> {
    let mut results = Vec::new();
    for path in &args.results {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let r: RunResult =
                serde_json::from_str(line).with_context(|| format!("{path}:{}", n + 1))?;
            results.push(r);
        }
    }
    let mut md = String::new();
    if !args.preamble.is_empty() {
        md.push_str(&args.preamble);
        md.push_str("\n\n");
    }
    md.push_str(&render(&results));
    print!("{md}");
    if let Some(path) = &args.update {
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        let (start, end) = markers(args.section.as_deref());
        std::fs::write(path, splice_at(&doc, &md, &start, &end)?)?;
        eprintln!("updated {path}");
    }
    Ok(())
}

/// Replaces the text between the default markers (or appends a marked section).
#[cfg(test)]
fn splice(doc: &str, body: &str) -> Result<String> {
    splice_at(doc, body, START, END)
}

/// Replaces the text between `start` and `end` (or appends a marked section).
fn splice_at(doc: &str, body: &str, start: &str, end: &str) -> Result<String> {
    match (doc.find(start), doc.find(end)) {
        (Some(s), Some(e)) if s < e => Ok(format!(
            "{}{start}\n{body}{end}{}",
            &doc[..s],
            &doc[e + end.len()..]
        )),
        (None, None) => Ok(format!("{doc}\n{start}\n{body}{end}\n")),
        _ => bail!("bench markers {start} … {end} are malformed"),
    }
}

/// Runs of one server in one case.
type ServerRuns = (String, Vec<RunResult>);

/// Runs grouped by case, then server, in order of first appearance.
fn group(results: &[RunResult]) -> Vec<(String, Vec<ServerRuns>)> {
    let mut cases: Vec<(String, Vec<ServerRuns>)> = Vec::new();
    for r in results {
        let case = match cases.iter_mut().find(|(c, _)| *c == r.case) {
            Some(c) => c,
            None => {
                cases.push((r.case.clone(), Vec::new()));
                cases.last_mut().expect("just pushed")
            }
        };
        match case.1.iter_mut().find(|(s, _)| *s == r.server) {
            Some(s) => s.1.push(r.clone()),
            None => case.1.push((r.server.clone(), vec![r.clone()])),
        }
    }
    cases
}

/// The spread of `key` over the runs, `min–max`, when there are several.
fn range(runs: &[RunResult], key: impl Fn(&RunResult) -> f64) -> String {
    if runs.len() < 2 {
        return String::new();
    }
    let (lo, hi) = runs
        .iter()
        .map(key)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    format!("{lo:.0}–{hi:.0}")
}

/// The most other processes used during any of the runs, marked ⚠ above
/// [`NOISY_PCT`] (the figure is not trustworthy then).
fn other_cpu(runs: &[RunResult]) -> String {
    match runs.iter().filter_map(|r| r.other_cpu_pct).reduce(f64::max) {
        Some(v) if v > NOISY_PCT => format!("⚠ {v:.0}%"),
        Some(v) => format!("{v:.0}%"),
        None => String::new(),
    }
}

fn median(runs: &[RunResult]) -> &RunResult {
    let mut order: Vec<usize> = (0..runs.len()).collect();
    let key = |r: &RunResult| match r.scenario.as_str() {
        "idle" => r.rss_per_conn_kib.unwrap_or(0.0),
        "docs-memory" => r.bytes_per_doc.unwrap_or(0.0),
        "docs-snapshot" => r.latency.p50_us as f64,
        _ => r.rate_per_s,
    };
    order.sort_by(|&a, &b| key(&runs[a]).total_cmp(&key(&runs[b])));
    &runs[order[order.len() / 2]]
}

/// Renders all cases.
pub fn render(results: &[RunResult]) -> String {
    let mut md = String::new();
    for (case, servers) in group(results) {
        let medians: BTreeMap<&str, &RunResult> = servers
            .iter()
            .map(|(s, runs)| (s.as_str(), median(runs)))
            .collect();
        let first = median(&servers[0].1);
        let ref_server = servers
            .iter()
            .flat_map(|(_, runs)| runs)
            .map(|r| r.ref_server.as_str())
            .find(|s| !s.is_empty())
            .unwrap_or("");
        let target = servers
            .iter()
            .flat_map(|(_, runs)| runs)
            .map(|r| r.target.as_str())
            .find(|s| !s.is_empty())
            .unwrap_or("");
        let _ = writeln!(md, "### {case}\n");
        if !target.is_empty() {
            let _ = writeln!(md, "Target: {target}\n");
        }
        if first.scenario == "docs-patch" {
            render_docs_patch(&mut md, &servers, ref_server, &medians);
        } else if first.scenario == "docs-snapshot" {
            render_docs_snapshot(&mut md, &servers);
        } else if first.scenario == "docs-memory" {
            render_docs_memory(&mut md, &servers);
        } else if first.scenario == "idle" {
            md.push_str("| server | connections | RSS before | RSS after | RSS / connection | handshakes/s | handshake p50 | handshake p99 | closed | other CPU |\n");
            md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for (server, runs) in &servers {
                let r = median(runs);
                if r.note.starts_with("n/a") {
                    let _ = writeln!(md, "| {server} | {} | | | | | | | | |", r.note);
                    continue;
                }
                let hs = r.handshake.unwrap_or_default();
                let _ = writeln!(
                    md,
                    "| {server} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                    r.connections,
                    kib(r.rss_before_kib),
                    kib(r.rss_after_kib),
                    r.rss_per_conn_kib
                        .map(|v| format!("**{v:.1} KiB**"))
                        .unwrap_or("n/a".into()),
                    r.handshakes_per_s.unwrap_or(0.0),
                    fmt_us(hs.p50_us),
                    fmt_us(hs.p99_us),
                    r.closed,
                    other_cpu(runs),
                );
            }
        } else {
            let unit = if first.scenario == "echo" {
                "msgs/s"
            } else {
                "deliveries/s"
            };
            let ref_rate = medians
                .get(ref_server)
                .map(|r| r.rate_per_s)
                .filter(|v| *v > 0.0);
            let ratio_head = if ref_rate.is_some() {
                format!(" vs {ref_server} |")
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| server | {unit} |{ratio_head} p50 | p95 | p99 | max | sent/s | errors | closed | runs | range | other CPU | note |"
            );
            let _ = writeln!(
                md,
                "|---|---:|{}---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                if ref_rate.is_some() { "---:|" } else { "" }
            );
            for (server, runs) in &servers {
                let r = median(runs);
                if r.note.starts_with("n/a") {
                    let pad = if ref_rate.is_some() { " |" } else { "" };
                    let _ = writeln!(
                        md,
                        "| {server} | n/a |{pad} | | | | | | | | | | {} |",
                        r.note
                    );
                    continue;
                }
                let ratio = match ref_rate {
                    Some(base) => format!(" {:.2}× |", r.rate_per_s / base),
                    None => String::new(),
                };
                let _ = writeln!(
                    md,
                    "| {server} | **{:.0}** |{ratio} {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    r.rate_per_s,
                    fmt_us(r.latency.p50_us),
                    fmt_us(r.latency.p95_us),
                    fmt_us(r.latency.p99_us),
                    fmt_us(r.latency.max_us),
                    r.sent_per_s,
                    r.errors,
                    r.closed,
                    runs.len(),
                    range(runs, |r| r.rate_per_s),
                    other_cpu(runs),
                    r.note,
                );
            }
        }
        md.push('\n');
    }
    md
}

/// Document patches against plain publishes: acked/s (ratio to the
/// reference), ack latency, deliveries/s and write-to-deliver latency.
fn render_docs_patch(
    md: &mut String,
    servers: &[ServerRuns],
    ref_server: &str,
    medians: &BTreeMap<&str, &RunResult>,
) {
    let ref_rate = medians
        .get(ref_server)
        .map(|r| r.rate_per_s)
        .filter(|v| *v > 0.0);
    let ratio_head = if ref_rate.is_some() {
        format!(" vs {ref_server} |")
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "| server | acked/s |{ratio_head} ack p50 | ack p99 | delivered/s | deliver p50 | deliver p99 | sent/s | errors | closed | runs | note |"
    );
    let _ = writeln!(
        md,
        "|---|---:|{}---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        if ref_rate.is_some() { "---:|" } else { "" }
    );
    for (server, runs) in servers {
        let r = median(runs);
        if r.note.starts_with("n/a") {
            let pad = if ref_rate.is_some() { " |" } else { "" };
            let _ = writeln!(md, "| {server} | n/a |{pad} | | | | | | | | | {} |", r.note);
            continue;
        }
        let ratio = match ref_rate {
            Some(base) => format!(" {:.2}× |", r.rate_per_s / base),
            None => String::new(),
        };
        let d = r.delivery.unwrap_or_default();
        let _ = writeln!(
            md,
            "| {server} | **{:.0}** |{ratio} {} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} |",
            r.rate_per_s,
            fmt_us(r.latency.p50_us),
            fmt_us(r.latency.p99_us),
            r.delivered_per_s.unwrap_or(0.0),
            fmt_us(d.p50_us),
            fmt_us(d.p99_us),
            r.sent_per_s,
            r.errors,
            r.closed,
            runs.len(),
            r.note,
        );
    }
}

/// Subscribe → SNAPSHOT latency.
fn render_docs_snapshot(md: &mut String, servers: &[ServerRuns]) {
    md.push_str("| server | snapshot | samples | p50 | p95 | p99 | max | errors | runs | note |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (server, runs) in servers {
        let r = median(runs);
        if r.note.starts_with("n/a") {
            let _ = writeln!(md, "| {server} | n/a | | | | | | | | {} |", r.note);
            continue;
        }
        let _ = writeln!(
            md,
            "| {server} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} |",
            bytes(r.size as f64),
            r.connections,
            fmt_us(r.latency.p50_us),
            fmt_us(r.latency.p95_us),
            fmt_us(r.latency.p99_us),
            fmt_us(r.latency.max_us),
            r.errors,
            runs.len(),
            r.note,
        );
    }
}

/// Server RSS per open document.
fn render_docs_memory(md: &mut String, servers: &[ServerRuns]) {
    md.push_str("| server | documents | RSS before | RSS after | RSS / document | documents/s | errors | runs | note |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (server, runs) in servers {
        let r = median(runs);
        if r.note.starts_with("n/a") {
            let _ = writeln!(md, "| {server} | n/a | | | | | | | {} |", r.note);
            continue;
        }
        let _ = writeln!(
            md,
            "| {server} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            r.documents.unwrap_or(0),
            kib(r.rss_before_kib),
            kib(r.rss_after_kib),
            r.bytes_per_doc
                .map(|v| format!("**{}**", bytes(v)))
                .unwrap_or("n/a".into()),
            r.rate_per_s,
            r.errors,
            runs.len(),
            r.note,
        );
    }
}

/// Bytes as B / KiB / MiB.
fn bytes(v: f64) -> String {
    if v < 1024.0 {
        format!("{v:.0} B")
    } else if v < 1024.0 * 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{:.2} MiB", v / (1024.0 * 1024.0))
    }
}

fn kib(v: Option<u64>) -> String {
    v.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(case: &str, server: &str, rate: f64) -> RunResult {
        RunResult {
            scenario: "echo".into(),
            case: case.into(),
            server: server.into(),
            rate_per_s: rate,
            ref_server: "peer".into(),
            ..RunResult::default()
        }
    }

    #[test]
    fn ratios_use_the_median_of_the_reference() {
        let results = vec![
            run("c", "peer", 100.0),
            run("c", "ours", 150.0),
            run("c", "peer", 300.0),
            run("c", "peer", 200.0),
        ];
        let md = render(&results);
        assert!(md.contains("| ours | **150** | 0.75× |"), "{md}");
        assert!(md.contains("| peer | **200** | 1.00× |"), "{md}");
    }

    #[test]
    fn docs_rows_render() {
        let patch = |server: &str, rate: f64| RunResult {
            scenario: "docs-patch".into(),
            case: "p".into(),
            server: server.into(),
            rate_per_s: rate,
            delivered_per_s: Some(rate * 10.0),
            ref_server: "publish".into(),
            ..RunResult::default()
        };
        let md = render(&[
            patch("publish", 1000.0),
            patch("lww", 500.0),
            RunResult {
                scenario: "docs-snapshot".into(),
                case: "s".into(),
                server: "lww".into(),
                size: 1_050_000,
                connections: 50,
                ..RunResult::default()
            },
            RunResult {
                scenario: "docs-memory".into(),
                case: "m".into(),
                server: "lww".into(),
                documents: Some(2000),
                bytes_per_doc: Some(1536.0),
                ..RunResult::default()
            },
        ]);
        assert!(md.contains("| lww | **500** | 0.50× |"), "{md}");
        assert!(md.contains("| 5000 |"), "{md}");
        assert!(md.contains("| lww | 1.00 MiB | 50 |"), "{md}");
        assert!(
            md.contains("| lww | 2000 |") && md.contains("**1.5 KiB**"),
            "{md}"
        );
    }

    #[test]
    fn splice_keeps_other_sections() {
        let doc = format!("# B\n\nintro\n{START}\nold\n{END}\n\n## Plugin calls\nkeep\n");
        let out = splice(&doc, "new\n").expect("splice");
        assert!(out.contains("new\n") && !out.contains("old"));
        assert!(out.ends_with("## Plugin calls\nkeep\n"));
        let appended = splice("# B\n", "x\n").expect("append");
        assert!(appended.contains(START) && appended.contains(END));
        assert!(splice(&format!("{END}{START}"), "x").is_err());
        let (s, e) = markers(Some("docs"));
        let both = splice_at(&out, "docs\n", &s, &e).expect("named section");
        assert!(both.contains("new\n") && both.contains(&format!("{s}\ndocs\n{e}")));
        let again = splice_at(&both, "docs2\n", &s, &e).expect("replace");
        assert!(again.contains("docs2") && !again.contains("docs\n<"));
    }
}
