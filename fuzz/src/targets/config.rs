//! `config::Config::from_toml` (and `from_toml_with_env`) on TOML built from
//! the example configs: byte flips, line deletions, duplications and moves,
//! key renames, value swaps (huge and negative numbers, weird durations,
//! wrong types), new table headers, deep nesting, truncation, splices, and
//! `SWITCHYARD_*` overrides. Errors are fine; panics are not. A config that
//! loads must render (`to_toml`) to TOML that loads again.

use switchyard_core::config::Config;

use crate::inputs;
use crate::{Rng, Target};

const FULL: &str = include_str!("../../../examples/configs/full.toml");
const DEMO: &str = include_str!("../../../examples/configs/demo.toml");

/// Values worth putting anywhere.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "127",
    "128",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "99999999999999999999999999",
    "0x7fffffff",
    "0o777",
    "0b1",
    "1_000",
    "1e308",
    "-1e308",
    "1.5",
    "inf",
    "-inf",
    "nan",
    "true",
    "false",
    "\"\"",
    "\"0\"",
    "\"0s\"",
    "\"0ns\"",
    "\"1ns\"",
    "\"1ms\"",
    "\"30\"",
    "\"1.5s\"",
    "\"-5s\"",
    "\"5 s\"",
    "\"1h 30m 15s\"",
    "\"1y\"",
    "\"100years\"",
    "\"584542046091y\"",
    "\"18446744073709551615s\"",
    "\"18446744073709551616s\"",
    "\"999999999999999999999999h\"",
    "\"1e9d\"",
    "\"9999999999weeks\"",
    "\"1 fortnight\"",
    "\"s\"",
    "\"memory\"",
    "\"redis\"",
    "\"json\"",
    "\"pretty\"",
    "\"deny\"",
    "\"allow\"",
    "\"sse\"",
    "\"poll\"",
    "\"*\"",
    "\"doc:*\"",
    "\"acme\"",
    "\"default\"",
    "\"127.0.0.1:0\"",
    "\"0.0.0.0:65535\"",
    "\"0.0.0.0:65536\"",
    "\"[::1]:8080\"",
    "\"[::]:0\"",
    "\"::::\"",
    "\"localhost:80\"",
    "\"redis://127.0.0.1:6379\"",
    "\"rediss://[::1]:99999\"",
    "\"redis://\"",
    "\"10.0.0.0/8\"",
    "\"::/0\"",
    "\"256.0.0.0/33\"",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "\"\u{10ffff}\u{feff}\"",
    "'literal'",
    "'''multi\nline'''",
    "\"\"\"multi\nline\"\"\"",
    "[]",
    "[1, 2, 3]",
    "[\"a\", \"b\"]",
    "[\"\"]",
    "[[], []]",
    "[\"10.0.0.0/8\", \"garbage\"]",
    "{}",
    "{ a = 1 }",
    "{ plugin = \"x\" }",
    "{ plugin = \"x\", on_error = \"allow\", config = { a = [1] } }",
    "1979-05-27T07:32:00Z",
    "1979-05-27",
    "07:32:00",
    "1979-05-27T07:32:00.999999999-07:00",
];

const HEADERS: &[&str] = &[
    "[server]",
    "[server.hosts]",
    "[server.tls]",
    "[limits]",
    "[broker]",
    "[plugins]",
    "[admin]",
    "[diagnostics]",
    "[log]",
    "[tenants]",
    "[tenants.default]",
    "[tenants.acme]",
    "[tenants.\"bad id!\"]",
    "[tenants.\"\"]",
    "[tenants.x]",
    "[tenants.acme.policies]",
    "[tenants.acme.policies.auth]",
    "[tenants.acme.policies.merge]",
    "[tenants.acme.policies.unknown_role]",
    "[[tenants.acme.channel_limits]]",
    "[[tenants.default.channel_limits]]",
    "[[tenants.acme.policies.router.config.rules]]",
    "[[server]]",
    "[limits.limits]",
    "[server.listen]",
    "[a.b.c.d.e.f.g]",
];

const EXTRA_KEYS: &[&str] = &[
    "tls",
    "cert",
    "key",
    "trusted_proxies",
    "max_connections_per_ip",
    "handshakes_per_ip_per_sec",
    "channel_limits",
    "pattern",
    "rate",
    "burst",
    "fallbacks",
    "poll_interval",
    "tcp_keepalive",
    "tcp_keepalive_interval",
    "sse_idle_timeout",
    "allowed_origins",
    "policies",
    "tenants",
];

/// One TOML text, with environment overrides.
#[derive(Debug, Clone)]
pub struct Input {
    /// The file.
    pub text: String,
    /// `SWITCHYARD_*` variables (empty: plain `from_toml`).
    pub env: Vec<(String, String)>,
}

/// The target.
#[derive(Debug)]
pub struct ConfigLoader {
    keys: Vec<String>,
    sections: Vec<String>,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        let mut keys: Vec<String> = EXTRA_KEYS.iter().map(|s| (*s).to_owned()).collect();
        let mut sections = Vec::new();
        for line in FULL.lines().chain(DEMO.lines()) {
            let l = line.trim();
            if let Some(h) = l.strip_prefix('[') {
                let h = h.trim_start_matches('[').trim_end_matches(']');
                sections.extend(h.split('.').map(str::to_owned));
            } else if let Some((k, _)) = l.split_once('=')
                && !l.starts_with('#')
            {
                keys.push(k.trim().to_owned());
            }
        }
        keys.sort();
        keys.dedup();
        sections.sort();
        sections.dedup();
        Self { keys, sections }
    }
}

fn value_pos(line: &str) -> Option<(usize, usize)> {
    // The value of `key = value  # comment`, roughly: after '=', before " #".
    let eq = line.find('=')?;
    let rest = &line[eq + 1..];
    let end = rest.find(" #").map_or(line.len(), |i| eq + 1 + i);
    Some((eq + 1, end))
}

impl ConfigLoader {
    fn value(&self, rng: &mut Rng) -> String {
        match rng.below(8) {
            0 => {
                let s = inputs::string(rng, 20);
                inputs::json_string(rng, &s)
            }
            1 => rng.interesting_u64().to_string(),
            2 => format!(
                "\"{}{}\"",
                rng.interesting_u64(),
                rng.pick(&["s", "ms", "ns", "m", "h", "d", "w", "y", "us", "µs", ""])
            ),
            3 if rng.chance(10) => {
                // Deep nesting.
                let n = rng.range(10, 20_000);
                if rng.chance(50) {
                    format!("{}{}", "[".repeat(n), "]".repeat(n))
                } else {
                    format!("{}1{}", "{ a = ".repeat(n), " }".repeat(n))
                }
            }
            _ => (*rng.pick(VALUES)).to_owned(),
        }
    }

    fn key(&self, rng: &mut Rng) -> String {
        let k = rng.pick(&self.keys).clone();
        match rng.below(10) {
            0 => k.to_ascii_uppercase(),
            1 => format!("{k}_x"),
            2 => format!(
                "\"{}\"",
                inputs::string(rng, 12).replace(['"', '\\', '\n', '\r'], "")
            ),
            3 => format!("{}.{k}", rng.pick(&self.sections)),
            4 => String::new(),
            _ => k,
        }
    }

    fn generated(&self, rng: &mut Rng) -> String {
        let mut out = String::new();
        for _ in 0..rng.range(1, 6) {
            out.push_str(rng.pick::<&str>(HEADERS));
            out.push('\n');
            for _ in 0..rng.range(0, 6) {
                let k = self.key(rng);
                let v = self.value(rng);
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }

    fn mutate_lines(&self, rng: &mut Rng, text: &str) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for _ in 0..rng.range(1, 8) {
            let n = lines.len();
            if n == 0 {
                lines.push(self.generated(rng));
                continue;
            }
            let i = rng.below(n);
            match rng.below(10) {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let l = lines[i].clone();
                    lines.insert(rng.below(n + 1), l);
                }
                2 => {
                    let j = rng.below(n);
                    lines.swap(i, j);
                }
                3 | 4 => {
                    // Value swap.
                    if let Some((a, b)) = value_pos(&lines[i]) {
                        let v = self.value(rng);
                        lines[i].replace_range(a..b, &format!(" {v}"));
                    }
                }
                5 => {
                    // Key rename.
                    if let Some(eq) = lines[i].find('=') {
                        let k = self.key(rng);
                        lines[i].replace_range(..eq, &format!("{k} "));
                    }
                }
                6 => lines.insert(i, (*rng.pick(HEADERS)).to_owned()),
                7 => {
                    let k = self.key(rng);
                    let v = self.value(rng);
                    lines.insert(i, format!("{k} = {v}"));
                }
                8 => {
                    let other: Vec<&str> = rng.pick(&[FULL, DEMO]).lines().collect();
                    let l = (*rng.pick(&other)).to_owned();
                    lines.insert(i, l);
                }
                _ => lines.truncate(i),
            }
        }
        let mut out = lines.join(if rng.chance(10) { "\r\n" } else { "\n" });
        if rng.chance(50) {
            out.push('\n');
        }
        out
    }

    fn env(&self, rng: &mut Rng) -> Vec<(String, String)> {
        (0..rng.range(1, 4))
            .map(|_| {
                let mut parts: Vec<String> = (0..rng.range(1, 4))
                    .map(|_| match rng.below(6) {
                        0 => String::new(),
                        1 => inputs::string(rng, 6),
                        2 => rng.pick(&self.keys).to_ascii_uppercase(),
                        _ => rng.pick(&self.sections).to_ascii_uppercase(),
                    })
                    .collect();
                parts.push(rng.pick(&self.keys).to_ascii_uppercase());
                let name = format!("SWITCHYARD_{}", parts.join("__"));
                let value = if rng.chance(30) {
                    inputs::string(rng, 20)
                } else {
                    self.value(rng)
                };
                (name, value)
            })
            .collect()
    }
}

impl Target for ConfigLoader {
    type Input = Input;

    fn name(&self) -> &'static str {
        "config"
    }

    fn about(&self) -> &'static str {
        "config::Config::from_toml / from_toml_with_env on mutated example configs; to_toml reloads"
    }

    fn full_iters(&self) -> u64 {
        1_000_000
    }

    fn short_iters(&self) -> u64 {
        2_000
    }

    fn generate(&self, rng: &mut Rng) -> Input {
        let seed = match rng.below(5) {
            0 => DEMO.to_owned(),
            1 => self.generated(rng),
            _ => FULL.to_owned(),
        };
        let text = match rng.below(10) {
            0 => {
                let mut b = seed.into_bytes();
                inputs::mutate_n(
                    rng,
                    &mut b,
                    &[b"[", b"]", b"=", b"\"", b"'", b"\n", b"#", b".", b"\\u"],
                    8,
                );
                String::from_utf8_lossy(&b).into_owned()
            }
            1 => self.generated(rng),
            2 => {
                let n = rng.len(200);
                String::from_utf8_lossy(&rng.bytes(n)).into_owned()
            }
            9 => seed,
            _ => self.mutate_lines(rng, &seed),
        };
        let env = if rng.chance(15) {
            self.env(rng)
        } else {
            Vec::new()
        };
        Input { text, env }
    }

    fn bytes(&self, input: &Input) -> Vec<u8> {
        let mut b = input.text.clone().into_bytes();
        for (k, v) in &input.env {
            b.extend_from_slice(format!("\n# env {k}={v}").as_bytes());
        }
        b
    }

    fn check(&self, input: &Input) -> Result<(), String> {
        let loaded = if input.env.is_empty() {
            Config::from_toml(&input.text)
        } else {
            Config::from_toml_with_env(&input.text, input.env.iter().cloned())
        };
        match loaded {
            Ok(cfg) => {
                let rendered = cfg.to_toml();
                Config::from_toml(&rendered).map(|_| ()).map_err(|e| {
                    format!("the effective config does not load again: {e}\n{rendered}")
                })
            }
            Err(e) => {
                let _ = e.to_string();
                Ok(())
            }
        }
    }
}
