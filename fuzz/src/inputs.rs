//! Shared generators: hostile strings, JSON text and values, byte mutations.

use crate::Rng;

/// Characters that tend to break parsers: quotes, escapes, controls, BOM,
/// line separators, combining marks, the last scalar values of each plane.
const NASTY: &[char] = &[
    '"',
    '\\',
    '/',
    '\0',
    '\u{1}',
    '\u{7}',
    '\u{8}',
    '\t',
    '\n',
    '\r',
    '\u{c}',
    '\u{1b}',
    '\u{1f}',
    '\u{7f}',
    '\u{80}',
    '\u{a0}',
    '\u{ad}',
    '\u{300}',
    '\u{2028}',
    '\u{2029}',
    '\u{200b}',
    '\u{202e}',
    '\u{feff}',
    '\u{fffd}',
    '\u{ffff}',
    '\u{10000}',
    '\u{10ffff}',
    'é',
    'ß',
    'ı',
    'İ',
    'ﬀ',
    '中',
    '😀',
    '%',
    '+',
    '&',
    '=',
    '#',
    '[',
    ']',
    '{',
    '}',
    ':',
    ',',
    '.',
    '*',
    '$',
    '\'',
    ' ',
];

/// One character: ASCII mostly, sometimes a nasty one or any scalar value.
pub fn char(rng: &mut Rng) -> char {
    match rng.below(10) {
        0..=5 => (b' ' + rng.below(95) as u8) as char,
        6 => (b'a' + rng.below(26) as u8) as char,
        7 | 8 => *rng.pick(NASTY),
        _ => loop {
            if let Some(c) = char::from_u32(rng.below(0x11_0000) as u32) {
                break c;
            }
        },
    }
}

/// A string of up to `max_chars` characters.
pub fn string(rng: &mut Rng, max_chars: usize) -> String {
    let n = rng.len(max_chars);
    (0..n).map(|_| char(rng)).collect()
}

/// A string of exactly `bytes` UTF-8 bytes or a little less (never cut inside a char).
pub fn string_of_bytes(rng: &mut Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes);
    while s.len() < bytes {
        let c = char(rng);
        if s.len() + c.len_utf8() > bytes {
            // Pad with ASCII so the length is exact.
            s.push('x');
            continue;
        }
        s.push(c);
    }
    s
}

/// A plain identifier-like string (channel names, keys that should parse).
pub fn word(rng: &mut Rng, max: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-:.*";
    let n = rng.range(1, max.max(1));
    (0..n).map(|_| *rng.pick(ALPHA) as char).collect()
}

/// JSON string text for `s`, escaped in one of the equivalent ways JSON
/// allows: literal, `\uXXXX` (surrogate pairs above the BMP), short escapes.
pub fn json_string(rng: &mut Rng, s: &str) -> String {
    let style = rng.below(4); // 0: minimal, 1: some \u, 2: all \u, 3: mixed with \/
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        let escape_u = match style {
            0 => false,
            1 => rng.chance(20),
            2 => true,
            _ => rng.chance(50),
        };
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if style == 3 => out.push_str("\\/"),
            '\n' if !escape_u => out.push_str("\\n"),
            '\t' if !escape_u => out.push_str("\\t"),
            '\r' if !escape_u => out.push_str("\\r"),
            '\u{8}' if !escape_u => out.push_str("\\b"),
            '\u{c}' if !escape_u => out.push_str("\\f"),
            c if (c as u32) < 0x20 || escape_u => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    if rng.chance(50) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// JSON whitespace (often none).
pub fn ws(rng: &mut Rng) -> &'static str {
    if rng.chance(80) {
        ""
    } else {
        rng.pick::<&str>(&[" ", "\n", "\t", "\r\n", "  \t ", "\n\n\n"])
    }
}

/// A JSON number as text: small, huge, negative, fractional, exponents.
pub fn json_number(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => rng.below(1000).to_string(),
        1 => format!("-{}", rng.interesting_u64()),
        2 => rng.interesting_u64().to_string(),
        3 => format!("{}.{}", rng.below(1000), rng.below(1_000_000)),
        4 => format!(
            "{}e{}{}",
            rng.below(10),
            rng.pick(&["", "+", "-"]),
            rng.below(400)
        ),
        5 => (*rng.pick(&[
            "0",
            "-0",
            "0.0",
            "-0.0e-0",
            "1E308",
            "1e309",
            "-1e400",
            "4.9e-324",
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "0.000000000000000000000000000001",
        ]))
        .to_owned(),
        6 => format!("{:.3}", (rng.next_u64() as f64) / 7.0),
        _ => "1".repeat(rng.range(1, 400)),
    }
}

/// JSON text, valid unless `broken`: objects, arrays, strings with every
/// escape, numbers at the edges, whitespace, duplicate keys, and (rarely) very
/// deep nesting.
pub fn json_text(rng: &mut Rng, depth: usize, broken: bool) -> String {
    let mut out = String::new();
    json_into(rng, depth, broken, &mut out);
    out
}

fn json_into(rng: &mut Rng, depth: usize, broken: bool, out: &mut String) {
    if broken && rng.chance(3) {
        out.push_str(rng.pick::<&str>(&[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\"\\",
            "\"\\u",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "nul",
            "tru",
            "-",
            "1e",
            "01",
            ".5",
            "NaN",
            "Infinity",
            "\u{0}",
            "'a'",
            "/*c*/",
            "\u{feff}",
        ]));
        return;
    }
    let choice = if depth == 0 {
        rng.below(5)
    } else {
        rng.below(8)
    };
    match choice {
        0 => out.push_str(rng.pick::<&str>(&["null", "true", "false"])),
        1 | 2 => out.push_str(&json_number(rng)),
        3 | 4 => {
            let s = string(rng, 24);
            out.push_str(&json_string(rng, &s));
        }
        5 if rng.chance(2) => {
            // Deep nesting: beyond serde_json's recursion limit sometimes.
            let n = rng.range(1, 4000);
            let (open, close) = if rng.chance(50) {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            for _ in 0..n {
                out.push_str(open);
            }
            out.push('1');
            for _ in 0..n {
                out.push_str(close);
            }
        }
        5 | 6 => {
            out.push('[');
            let n = rng.len(6);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws(rng));
                json_into(rng, depth - 1, broken, out);
                out.push_str(ws(rng));
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            let n = rng.len(6);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws(rng));
                let k = if rng.chance(30) {
                    (*rng.pick(&["a", "b", "type", "id", "data"])).to_owned()
                } else {
                    string(rng, 12)
                };
                out.push_str(&json_string(rng, &k));
                out.push_str(ws(rng));
                out.push(':');
                out.push_str(ws(rng));
                json_into(rng, depth - 1, broken, out);
            }
            out.push('}');
        }
    }
}

/// A valid JSON value (for round trips, encoded with `serde_json`).
pub fn json_value(rng: &mut Rng, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    let choice = if depth == 0 {
        rng.below(6)
    } else {
        rng.below(8)
    };
    match choice {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => Value::from(rng.interesting_u64()),
        3 => Value::from(-(rng.below(1 << 20) as i64)),
        4 => serde_json::Number::from_f64((rng.next_u64() as f64) / 1e6 - 9e12)
            .map_or(Value::Null, Value::Number),
        5 => Value::String(string(rng, 24)),
        6 => Value::Array(
            (0..rng.len(5))
                .map(|_| json_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.len(5))
                .map(|_| (string(rng, 10), json_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// Applies one random byte-level mutation; `dict` holds tokens worth inserting.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]]) {
    let len = data.len();
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = *rng.pick(&[0x00, 0x01, 0x7f, 0x80, 0xc0, 0xe0, 0xf0, 0xff, b'"', b'\\']);
        }
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.byte();
        }
        3 if len > 0 => {
            // Delete a range.
            let i = rng.below(len);
            let n = rng.range(1, (len - i).min(16));
            data.drain(i..i + n);
        }
        4 if len > 0 => {
            // Duplicate a range in place.
            let i = rng.below(len);
            let n = rng.range(1, (len - i).min(32));
            let chunk = data[i..i + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        5 if !dict.is_empty() => {
            let tok = *rng.pick(dict);
            let at = rng.below(len + 1);
            data.splice(at..at, tok.iter().copied());
        }
        6 if !dict.is_empty() && len > 0 => {
            // Overwrite with a token.
            let tok = *rng.pick(dict);
            let at = rng.below(len);
            let end = (at + tok.len()).min(len);
            data.splice(at..end, tok.iter().copied());
        }
        7 => {
            let at = rng.below(len + 1);
            let n = rng.len(8);
            let b = rng.bytes(n);
            data.splice(at..at, b);
        }
        8 if len > 0 => {
            data.truncate(rng.below(len));
        }
        9 if len > 1 => {
            // Swap two bytes.
            let (i, j) = (rng.below(len), rng.below(len));
            data.swap(i, j);
        }
        10 if len > 0 && len < 1 << 16 => {
            // Repeat a chunk many times.
            let i = rng.below(len);
            let n = rng.range(1, (len - i).min(8));
            let chunk = data[i..i + n].to_vec();
            let times = rng.range(2, 2000);
            let at = rng.below(len + 1);
            let rep: Vec<u8> = chunk.iter().copied().cycle().take(n * times).collect();
            data.splice(at..at, rep);
        }
        _ => {
            let at = rng.below(len + 1);
            data.insert(at, rng.byte());
        }
    }
}

/// `1..=max` stacked mutations.
pub fn mutate_n(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]], max: usize) {
    for _ in 0..rng.range(1, max) {
        mutate_bytes(rng, data, dict);
    }
}
