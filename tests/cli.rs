//! `switchyard config check FILE` and `switchyard config example`, run as the
//! real binary: a valid file prints the effective configuration (every key,
//! defaults filled in) as TOML and exits 0; an invalid one prints the error
//! naming the key's path and exits non-zero; the example passes `check` as
//! written, through a pipe, and with its optional lines enabled, and it
//! documents every key the loader knows and every key of DESIGN §3b.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use switchyard_tests::{binary, scratch_dir};

/// Runs the binary with `args` (no `SWITCHYARD_*` variables but `env`),
/// feeding `stdin`.
fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHYARD_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn switchyard");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check(path: &Path, env: &[(&str, &str)]) -> Output {
    run(
        &["config", "check", path.to_str().expect("utf-8 path")],
        env,
        None,
    )
}

fn example() -> String {
    let out = run(&["config", "example"], &[], None);
    assert!(out.status.success(), "config example: {out:?}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The example with its optional `#key = …` / `#[table]` lines enabled.
fn enabled(example: &str) -> String {
    example
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Dotted key paths of a TOML document, with the names an operator picks
/// (tenant ids, `server.hosts` entries, policy roles) as `*`, array-of-table
/// entries as `[]`, and a policy's free-form `config` as a leaf.
fn key_paths(doc: &toml::Table) -> BTreeSet<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
        let wildcard =
            prefix == "tenants" || prefix == "server.hosts" || prefix.ends_with(".policies");
        match v {
            toml::Value::Table(t) if !prefix.ends_with(".config") => {
                for (k, x) in t {
                    let k = if wildcard { "*" } else { k.as_str() };
                    let p = if prefix.is_empty() {
                        k.to_owned()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x, out);
                }
            }
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                for x in a {
                    walk(&format!("{prefix}[]"), x, out);
                }
            }
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", &toml::Value::Table(doc.clone()), &mut out);
    out
}

#[test]
fn check_prints_the_effective_config_with_defaults() {
    let dir = scratch_dir("cli-check");
    let file = dir.join("small.toml");
    std::fs::write(
        &file,
        "[server]\nnode_id = \"node-q\"\n[limits]\npublish_rate = 7\n\
         [tenants.acme]\norigins = [\"https://a.test\"]\n",
    )
    .expect("write");
    let out = check(&file, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.trim(), format!("{}: ok", file.display()));
    let eff: toml::Table = toml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    // the file's values …
    assert_eq!(eff["limits"]["publish_rate"].as_integer(), Some(7));
    assert_eq!(eff["server"]["node_id"].as_str(), Some("node-q"));
    assert_eq!(
        eff["tenants"]["acme"]["origins"][0].as_str(),
        Some("https://a.test")
    );
    // … and every default: sections and keys the file does not name
    assert_eq!(eff["limits"]["max_message_bytes"].as_integer(), Some(65536));
    assert_eq!(eff["limits"]["idle_timeout"].as_str(), Some("1m"));
    assert_eq!(eff["broker"]["kind"].as_str(), Some("memory"));
    assert_eq!(eff["plugins"]["cache_dir"].as_str(), Some("plugins/.cache"));
    assert_eq!(
        eff["tenants"]["acme"]["history_size"].as_integer(),
        Some(100)
    );
    assert!(
        eff["tenants"].get("default").is_some(),
        "the default tenant"
    );
    assert!(!stdout.contains("node_id is not set"), "{stdout}");
    // The output is itself a valid file with the same effective config.
    let again = dir.join("again.toml");
    std::fs::write(&again, &stdout).expect("write");
    let out2 = check(&again, &[]);
    assert_eq!(out2.status.code(), Some(0), "{}", text(&out2.stderr));
    let eff2: toml::Table = toml::from_str(&text(&out2.stdout)).expect("toml");
    assert_eq!(eff2, eff);

    // Environment overrides are applied and named; an unset node id is noted.
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "").expect("write");
    let out = check(&empty, &[("SWITCHYARD_LIMITS__PUBLISH_RATE", "9")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("# Environment overrides applied: SWITCHYARD_LIMITS__PUBLISH_RATE"),
        "{stdout}"
    );
    let eff: toml::Table = toml::from_str(&stdout).expect("toml");
    assert_eq!(eff["limits"]["publish_rate"].as_integer(), Some(9));
    assert!(stdout.contains("# node_id is not set"), "{stdout}");
}

#[test]
fn check_refuses_an_invalid_file_naming_the_key() {
    let dir = scratch_dir("cli-invalid");
    for (name, body, names) in [
        (
            "unknown-key.toml",
            "[limits]\nmax_mesage_bytes = 5\n",
            "limits.max_mesage_bytes",
        ),
        (
            "nested.toml",
            "[tenants.acme.policies.auth]\nplugin = \"jwt-auth\"\nbogus = 1\n",
            "tenants.acme.policies.auth.bogus",
        ),
        (
            "wrong-type.toml",
            "[limits]\nidle_timeout = 60\n",
            "limits.idle_timeout",
        ),
        (
            "bad-value.toml",
            "[limits]\nsend_queue_messages = 0\n",
            "limits.send_queue_messages",
        ),
        (
            "unknown-section.toml",
            "[telemetri]\notlp_endpoint = \"\"\n",
            "telemetri",
        ),
        ("syntax.toml", "[limits\npublish_rate = 1\n", "line 1"),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, body).expect("write");
        let out = check(&file, &[]);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "{name}: exit {:?}",
            out.status
        );
        assert!(
            stderr.starts_with(&format!("{}: ", file.display())) && stderr.contains(names),
            "{name}: the error must name {names:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
    }
    // An override naming an unknown key is refused like the file's own keys.
    let ok = dir.join("ok.toml");
    std::fs::write(&ok, "").expect("write");
    let out = check(&ok, &[("SWITCHYARD_LIMITS__NOPE", "1")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("limits.nope"), "{out:?}");
    // A file that does not exist.
    let out = check(&dir.join("missing.toml"), &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read"), "{out:?}");
}

#[test]
fn the_example_passes_check_and_documents_every_key() {
    let example = example();
    assert!(example.starts_with('#'), "a commented file");
    // example | switchyard config check -
    let out = run(&["config", "check", "-"], &[], Some(&example));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the example fails its own check: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr).trim(), "<stdin>: ok");
    // From a file, with every optional line enabled too.
    let dir = scratch_dir("cli-example");
    let all = enabled(&example);
    assert_ne!(all, example, "the example has optional lines");
    let file = dir.join("all.toml");
    std::fs::write(&file, &all).expect("write");
    let out = check(&file, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the example with its optional lines enabled fails: {}",
        text(&out.stderr)
    );
    // Every key of the effective config (all sections, a tenant, a policy
    // with every field, TLS, a channel limit) is written in the example.
    let effective: toml::Table = toml::from_str(&stdout).expect("effective toml");
    let written: toml::Table = toml::from_str(&all).expect("example toml");
    let (effective, written) = (key_paths(&effective), key_paths(&written));
    for must in [
        "server.tls.cert",
        "tenants.*.policies.*.call_timeout",
        "tenants.*.channel_limits[].burst",
        "plugins.watch",
    ] {
        assert!(effective.contains(must), "{must} in {effective:?}");
    }
    let missing: Vec<&String> = effective.difference(&written).collect();
    assert!(
        missing.is_empty(),
        "keys the loader knows that `config example` does not show \
         (add them to host/switchyard/src/config-example.toml): {missing:?}"
    );
    // DESIGN §3b's keys, including the ones this build does not accept yet
    // (mentioned in the example's closing comment).
    for key in [
        "listen",
        "node_id",
        "drain_timeout",
        "max_message_bytes",
        "heartbeat_interval",
        "idle_timeout",
        "handshake_timeout",
        "send_queue_messages",
        "publish_rate",
        "publish_burst",
        "kind",
        "redis_urls",
        "dir",
        "token",
        "echo",
        "origins",
        "api_keys",
        "history_size",
        "history_ttl",
        "plugin",
        "on_error",
        "config",
        "trusted_proxies",
        "cert",
        "key",
        "send_queue_bytes",
        "max_connections_per_ip",
        "handshakes_per_ip_per_sec",
        "document_max_bytes",
        "presence_events_max",
        "nats_urls",
        "otlp_endpoint",
        "service_name",
        "sample_ratio",
        "documents",
        "fallbacks",
        "poll_interval",
        "match",
        "rate",
        "burst",
        "shadow",
        "shadow_sample",
        "record_dir",
        "brokers",
        "tenant",
        "group",
        "consume",
        "produce",
    ] {
        assert!(
            example.contains(&format!("{key} =")),
            "DESIGN §3b key {key:?} is not in `config example`"
        );
    }
    for table in [
        "[server]",
        "[server.tls]",
        "[limits]",
        "[broker]",
        "[plugins]",
        "[admin]",
        "[diagnostics]",
        "[telemetry]",
        "[tenants.default]",
        "[tenants.acme.policies.auth]",
        "[[tenants.acme.channel_limits]]",
        "[[bridges.kafka]]",
    ] {
        assert!(
            example.contains(table),
            "{table} is not in `config example`"
        );
    }
}
