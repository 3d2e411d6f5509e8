//! Command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_core::Config;

/// Switchyard: a programmable realtime gateway.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (default: 127.0.0.1:8080, in-memory broker).
    Serve {
        /// Configuration file (TOML). Every key is optional.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overriding `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration.
    Check {
        /// Configuration file (TOML).
        file: PathBuf,
    },
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve {
        config: None,
        listen: None,
    }) {
        Command::Serve { config, listen } => {
            let mut cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("switchyard: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            crate::runtime::serve(cfg, config)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(Some(&file)) {
            Ok(c) => {
                print!("{}", c.to_toml());
                eprintln!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
    }
}
