//! Command line.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Run a plugin offline on a recording (`POST /admin/record`),
    /// deterministically, and print each decision that differs from the
    /// recorded one and a summary. Exit status 0 when none differ, 1 when
    /// some do, 2 on bad input.
    Replay {
        /// The plugin component to run.
        #[arg(long)]
        plugin: PathBuf,
        /// The recording (JSON lines).
        #[arg(long)]
        calls: PathBuf,
        /// The plugin's config as JSON, instead of the recorded one.
        #[arg(long)]
        config: Option<String>,
        /// Print one JSON report on stdout (for CI).
        #[arg(long)]
        json: bool,
        /// Seed of the plugin's (WASI) randomness.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with the `SWITCHYARD_*` environment
    /// overrides applied) and print the effective configuration, every key
    /// with its default filled in, as TOML. Exit status 2 on an invalid file.
    Check {
        /// Configuration file (TOML); `-` reads standard input.
        file: PathBuf,
    },
    /// Print a commented configuration with every key (valid as it stands).
    Example,
}

/// The annotated example printed by `config example`.
const EXAMPLE: &str = include_str!("config-example.toml");

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
        } => config_check(&file),
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{EXAMPLE}");
            ExitCode::SUCCESS
        }
        Command::Replay {
            plugin,
            calls,
            config,
            json,
            seed,
        } => replay(&plugin, &calls, config, json, seed),
    }
}

/// `replay`: the differences and a summary (text or `--json`) on stdout;
/// exit 0 (none differ), 1 (some differ) or 2 (bad input, on stderr).
fn replay(plugin: &Path, calls: &Path, config: Option<String>, json: bool, seed: u64) -> ExitCode {
    let opts = switchyard_policy::replay::Options {
        config,
        seed,
        call_timeout: None,
    };
    let report = match switchyard_policy::replay::replay(plugin, calls, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard replay: {e}");
            return ExitCode::from(2);
        }
    };
    let name = plugin.display().to_string();
    if json {
        println!("{}", report.json(&name, &calls.display().to_string()));
    } else {
        print!("{}", report.text(&name));
    }
    if report.differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `config check FILE`: the effective configuration on stdout and `FILE: ok`
/// on stderr (exit 0), or `FILE: <key path>: <problem>` on stderr (exit 2).
fn config_check(file: &Path) -> ExitCode {
    let stdin = file == Path::new("-");
    let name = if stdin {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    };
    let mut stdin_text = String::new();
    if stdin && let Err(e) = std::io::stdin().read_to_string(&mut stdin_text) {
        eprintln!("{name}: cannot read: {e}");
        return ExitCode::from(2);
    }
    // The real loader, twice: a node id that differs between two loads was
    // generated (hostname + random suffix), not configured.
    let load = || {
        if stdin {
            Config::from_toml_with_env(&stdin_text, std::env::vars())
        } else {
            Config::load(Some(file))
        }
    };
    match load() {
        Ok(c) => {
            let generated = load().is_ok_and(|again| again.server.node_id != c.server.node_id);
            print!("{}", effective(&name, &c, generated));
            eprintln!("{name}: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}

/// The effective configuration as TOML, with a header naming the file and the
/// environment overrides that were applied.
fn effective(name: &str, c: &Config, node_id_generated: bool) -> String {
    let mut out = format!("# Effective configuration of {name}: every key, defaults filled in.\n");
    let mut vars: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("SWITCHYARD_") && k.contains("__"))
        .collect();
    vars.sort();
    if !vars.is_empty() {
        out.push_str(&format!(
            "# Environment overrides applied: {}\n",
            vars.join(", ")
        ));
    }
    out.push('\n');
    let mut noted = !node_id_generated;
    for line in c.to_toml().lines() {
        if !noted && line.starts_with("node_id = ") {
            out.push_str(
                "# node_id is not set: generated at each start (hostname + random suffix), e.g.\n",
            );
            noted = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example with its optional `#key = …` / `#[table]` lines enabled.
    fn enabled(text: &str) -> String {
        text.lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_example_loads_as_written_and_with_every_option_enabled() {
        let c = Config::from_toml(EXAMPLE).unwrap_or_else(|e| panic!("as written: {e}"));
        assert!(c.server.tls.is_none());
        let all = enabled(EXAMPLE);
        assert_ne!(all, EXAMPLE);
        let c = Config::from_toml(&all).unwrap_or_else(|e| panic!("enabled: {e}\n{all}"));
        assert!(c.server.tls.is_some());
        assert_eq!(c.server.node_id, "node-a");
        let auth = c.tenants["acme"].policies.auth.as_ref().expect("auth");
        assert!(auth.call_timeout.is_some() && auth.memory_limit.is_some());
    }

    #[test]
    fn the_effective_config_notes_a_generated_node_id_and_parses_back() {
        let c = Config::from_toml("").expect("defaults");
        let text = effective("x.toml", &c, true);
        assert!(
            text.starts_with("# Effective configuration of x.toml"),
            "{text}"
        );
        let note = text.find("# node_id is not set").expect("note");
        assert!(
            text[note..]
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("node_id = "))
        );
        assert_eq!(Config::from_toml(&text).expect("parses back"), c);
        assert!(!effective("x.toml", &c, false).contains("# node_id is not set"));
    }
}
