//! Channel-name patterns: `*` matches any run of characters (including `:`
//! and the empty run); every other character matches itself.

/// Whether `channel` matches the glob `pattern` (`room:*`, `*:log`, `a*b*c`, `*`).
///
/// ```
/// use switchyard_sdk::glob_match;
/// assert!(glob_match("room:*", "room:lobby"));
/// assert!(glob_match("room:*", "room:"));
/// assert!(glob_match("*:log", "audit:log"));
/// assert!(!glob_match("room:*", "rooms:lobby"));
/// assert!(glob_match("exact", "exact"));
/// ```
pub fn glob_match(pattern: &str, channel: &str) -> bool {
    let (p, c) = (pattern.as_bytes(), channel.as_bytes());
    let (mut pi, mut ci) = (0, 0);
    // Position of the last `*` seen and the channel index it currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while ci < c.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ci));
            pi += 1;
        } else if pi < p.len() && p[pi] == c[ci] {
            pi += 1;
            ci += 1;
        } else if let Some((sp, sc)) = star {
            // Let the last star absorb one more character and retry.
            pi = sp + 1;
            ci = sc + 1;
            star = Some((sp, sc + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Whether `channel` matches any of `patterns`.
///
/// ```
/// use switchyard_sdk::matches_any;
/// let allowed = ["room:*", "user:alice"];
/// assert!(matches_any(&allowed, "room:1"));
/// assert!(!matches_any(&allowed, "user:bob"));
/// assert!(!matches_any::<&str>(&[], "room:1"));
/// ```
pub fn matches_any<S: AsRef<str>>(patterns: &[S], channel: &str) -> bool {
    patterns.iter().any(|p| glob_match(p.as_ref(), channel))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything:at:all", true),
            ("", "", true),
            ("", "a", false),
            ("a*", "a", true),
            ("a*c", "abc", true),
            ("a*c", "abd", false),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("**", "x", true),
            ("room:*:msg", "room:1:msg", true),
            ("room:*:msg", "room:1:msgs", false),
            ("*x", "xxxx", true),
            ("chat:*", "chat", false),
        ];
        for (p, c, want) in cases {
            assert_eq!(glob_match(p, c), want, "{p:?} vs {c:?}");
        }
    }
}
