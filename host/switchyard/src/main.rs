//! `switchyard`: the gateway binary. Thin: parse the CLI, load config, wire the
//! node, serve, drain on SIGTERM/SIGINT, reload tenant policies on SIGHUP.

mod cli;
mod runtime;
mod telemetry;

fn main() -> std::process::ExitCode {
    cli::main()
}
