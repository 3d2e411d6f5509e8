//! `switchyard-bench`: the load tool. Scenarios `echo`, `fanout`,
//! `cross-node` and `idle` against Switchyard or peer servers, the document
//! channel scenarios `docs-patch`, `docs-snapshot` and `docs-memory` against
//! Switchyard; `report`
//! turns collected JSON lines into the markdown table of docs/benchmarks.md.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use switchyard_bench::run::Common;
use switchyard_bench::stats::{self, RunResult};
use switchyard_bench::{docs, echo, fanout, idle, report};

/// Load tool for WebSocket servers: Switchyard and its peers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N connections echo messages: msgs/s and round-trip latency.
    Echo(echo::EchoArgs),
    /// Publishers to subscribers on channels: deliveries/s and latency.
    Fanout(fanout::FanoutArgs),
    /// Fan-out across nodes: publish on one URL, subscribe on others.
    CrossNode(fanout::FanoutArgs),
    /// Open and hold connections: server RSS per connection, handshake rate.
    Idle(idle::IdleArgs),
    /// N editors patch one document channel, W patches in flight each:
    /// acked patches/s, delivered PATCH frames/s, ack latency (`--plain`:
    /// the same through JSON publishes to a normal channel).
    DocsPatch(docs::PatchArgs),
    /// Build a large LWW document over HTTP, then time subscribe → SNAPSHOT
    /// on fresh connections.
    DocsSnapshot(docs::SnapshotArgs),
    /// Open many small documents over HTTP: server RSS per open document.
    DocsMemory(docs::MemoryArgs),
    /// Render collected JSON results as markdown tables.
    Report(report::ReportArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Report(args) = &cli.command {
        return report::run(args);
    }
    stats::raise_nofile();
    stats::now_ns();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Echo(args) => echo::run(args, &cli.common).await,
            Command::Fanout(args) => fanout::run(args, &cli.common, "fanout").await,
            Command::CrossNode(args) => {
                anyhow::ensure!(!args.sub_urls.is_empty(), "cross-node needs --sub-url");
                fanout::run(args, &cli.common, "cross-node").await
            }
            Command::Idle(args) => idle::run(args, &cli.common).await,
            Command::DocsPatch(args) => docs::run_patch(args, &cli.common).await,
            Command::DocsSnapshot(args) => docs::run_snapshot(args, &cli.common).await,
            Command::DocsMemory(args) => docs::run_memory(args, &cli.common).await,
            Command::Report(_) => unreachable!("handled above"),
        }
    });
    // Do not wait for lingering connection tasks.
    runtime.shutdown_background();
    let mut result = result?;
    result.ref_server = cli.common.ref_server.clone();
    result.target = cli.common.target.clone();
    result.other_cpu_pct = switchyard_bench::load::take();
    emit(&result, cli.common.json.as_deref())
}

fn emit(result: &RunResult, json: Option<&str>) -> Result<()> {
    println!("{}", result.line());
    let line = serde_json::to_string(result)?;
    match json {
        Some("-") => println!("{line}"),
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {path}"))?;
            writeln!(f, "{line}")?;
        }
        None => {}
    }
    Ok(())
}
