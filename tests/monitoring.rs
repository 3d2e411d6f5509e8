//! deploy/prometheus/alerts.yml and deploy/grafana/switchyard.json only use
//! metrics that exist: every `switchyard_*` series named in an alert
//! expression or a dashboard query (and every label matched in a selector)
//! must be served by a real gateway's `GET /metrics` — a gateway on the Redis
//! broker (for the broker families) with a router plugin and a broken plugin
//! file (for the plugin families), after a little traffic (connections
//! opened and closed, a publish delivered, a malformed frame, a refused
//! upgrade) so the labelled families have samples.
//!
//! A name resolves against the exposition the way Prometheus stores it: a
//! counter family `x` is the series `x_total`, a histogram `x` is `x_bucket`,
//! `x_sum` and `x_count`, a gauge is `x` itself — so `x_total` on a gauge or
//! a bare counter name is an error, not a match.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::redis::RedisServer;
use switchyard_tests::{Client, Gateway, WAIT, repo_root, scratch_dir, target_dir};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

// ---- what the recipes reference ---------------------------------------------

/// A metric used by a query, with the label names its selector matches on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    series: String,
    labels: BTreeSet<String>,
    /// Where it was found (alert name or panel title).
    at: String,
}

/// The `expr:` values of alerts.yml, by alert name (`expr: |` blocks included).
fn alert_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        } else if let Some(rest) = t.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest == "|-" || rest == ">-" {
                let indent = line.len() - t.len();
                let mut block = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let nt = next.trim_start();
                    if !nt.is_empty() && next.len() - nt.len() <= indent {
                        break;
                    }
                    block.push_str(nt);
                    block.push('\n');
                    i += 1;
                }
                out.push((alert.clone(), block));
            } else {
                out.push((alert.clone(), rest.trim_matches(['\'', '"']).to_owned()));
            }
        }
        i += 1;
    }
    out
}

/// Every PromQL string of a Grafana dashboard: panel targets' `expr` and
/// template variables' `query` / `definition`, with the panel title.
fn dashboard_exprs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let here = m
                .get("title")
                .or_else(|| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or(at);
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => {
                        out.push((here.to_owned(), s.clone()));
                    }
                    ("query", Value::String(s)) => out.push((here.to_owned(), s.clone())),
                    ("query", Value::Object(q)) => {
                        if let Some(s) = q.get("query").and_then(Value::as_str) {
                            out.push((here.to_owned(), s.to_owned()));
                        }
                    }
                    _ => dashboard_exprs(x, here, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, at, out)),
        _ => {}
    }
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The `switchyard_*` series of one PromQL expression, with the label names of
/// the selector that follows each (`name{a="x", b=~"y"}`).
fn uses(expr: &str, at: &str) -> Vec<Use> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut in_string: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = in_string {
            if c == '\\' {
                i += 1;
            } else if c == q {
                in_string = None;
            }
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            in_string = Some(c);
            i += 1;
            continue;
        }
        let starts = expr[char_offset(&chars, i)..].starts_with("switchyard_")
            && (i == 0 || !ident_char(chars[i - 1]));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && ident_char(chars[j]) {
            j += 1;
        }
        let series: String = chars[i..j].iter().collect();
        let mut labels = BTreeSet::new();
        let mut k = j;
        while k < chars.len() && chars[k].is_whitespace() {
            k += 1;
        }
        if k < chars.len() && chars[k] == '{' {
            let close = (k..chars.len())
                .find(|&n| chars[n] == '}')
                .unwrap_or(chars.len());
            let body: String = chars[k + 1..close].iter().collect();
            for m in split_matchers(&body) {
                let name: String = m.trim().chars().take_while(|c| ident_char(*c)).collect();
                if !name.is_empty() {
                    labels.insert(name);
                }
            }
            j = close;
        }
        out.push(Use {
            series,
            labels,
            at: at.to_owned(),
        });
        i = j;
    }
    out
}

fn char_offset(chars: &[char], i: usize) -> usize {
    chars[..i].iter().map(|c| c.len_utf8()).sum()
}

/// Splits `a="x,y", b!~"z"` at the commas outside quotes.
fn split_matchers(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in body.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, ',') => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

/// Every PromQL expression of alerts.yml and the Grafana dashboard, with
/// where it is (`alert <name>` / `panel "<title>"`).
fn expressions() -> Vec<(String, String)> {
    let root = repo_root();
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml"))
        .expect("deploy/prometheus/alerts.yml");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/switchyard.json"))
            .expect("deploy/grafana/switchyard.json"),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<(String, String)> = alert_exprs(&alerts)
        .into_iter()
        .map(|(a, e)| (format!("alert {a}"), e))
        .collect();
    let mut d = Vec::new();
    dashboard_exprs(&dash, "dashboard", &mut d);
    exprs.extend(d.into_iter().map(|(p, e)| (format!("panel {p:?}"), e)));
    exprs
}

/// Every metric use in alerts.yml and the Grafana dashboard.
fn referenced() -> Vec<Use> {
    expressions()
        .iter()
        .flat_map(|(at, e)| uses(e, at))
        .collect()
}

/// The labels of every `by (…)` clause of an expression (outside strings).
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut in_string: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = in_string {
            if c == '\\' {
                i += 1;
            } else if c == q {
                in_string = None;
            }
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            in_string = Some(c);
        } else if c == 'b'
            && chars.get(i + 1) == Some(&'y')
            && (i == 0 || !ident_char(chars[i - 1]))
            && !chars.get(i + 2).is_some_and(|c| ident_char(*c))
        {
            let mut k = i + 2;
            while k < chars.len() && chars[k].is_whitespace() {
                k += 1;
            }
            if chars.get(k) == Some(&'(') {
                let close = (k..chars.len())
                    .find(|&n| chars[n] == ')')
                    .unwrap_or(chars.len());
                let body: String = chars[k + 1..close].iter().collect();
                out.extend(
                    body.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
                i = close;
            }
        }
        i += 1;
    }
    out
}

// ---- what a gateway exposes -------------------------------------------------

/// Labels Prometheus adds at scrape time or by relabelling (prometheus.yml).
const TARGET_LABELS: [&str; 3] = ["job", "instance", "node"];

/// A parsed Prometheus text exposition.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type (`counter`, `gauge`, `histogram`, …).
    types: BTreeMap<String, String>,
    /// Sample (series) name → label names seen on it.
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    e.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let labels = e.samples.entry(name.to_owned()).or_default();
            if line[name_end..].starts_with('{') {
                let close = line.rfind('}').unwrap_or(line.len());
                for m in split_matchers(&line[name_end + 1..close]) {
                    if let Some((k, _)) = m.split_once('=') {
                        labels.insert(k.trim().to_owned());
                    }
                }
            }
        }
        e
    }

    /// The family and type a series name belongs to, the way Prometheus
    /// names the series of each type.
    fn family_of(&self, series: &str) -> Option<(&str, &str)> {
        let typed = |fam: &str, allowed: &[&str]| {
            self.types
                .get_key_value(fam)
                .filter(|(_, t)| allowed.contains(&t.as_str()))
                .map(|(f, t)| (f.as_str(), t.as_str()))
        };
        if let Some(f) = typed(series, &["gauge", "unknown", "stateset", "info"]) {
            return Some(f);
        }
        for (suffix, types) in [
            ("_total", &["counter"][..]),
            ("_created", &["counter", "histogram", "summary"][..]),
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ] {
            if let Some(fam) = series.strip_suffix(suffix)
                && let Some(f) = typed(fam, types)
            {
                return Some(f);
            }
        }
        None
    }

    /// Why `u` does not resolve, or `None` when it does.
    fn problem(&self, u: &Use) -> Option<String> {
        let Some((family, kind)) = self.family_of(&u.series) else {
            let near: Vec<&String> = self
                .types
                .keys()
                .filter(|f| u.series.starts_with(f.as_str()) || f.starts_with(u.series.as_str()))
                .collect();
            return Some(format!(
                "{}: no such series (families with that stem: {near:?}; {})",
                u.series,
                "a counter is <family>_total, a histogram <family>_bucket/_sum/_count, a gauge <family>"
            ));
        };
        let Some(seen) = self.samples.get(&u.series) else {
            return Some(format!(
                "{}: family {family} ({kind}) has no sample of it",
                u.series
            ));
        };
        let missing: Vec<&String> = u
            .labels
            .iter()
            .filter(|l| !seen.contains(*l) && !TARGET_LABELS.contains(&l.as_str()))
            .collect();
        (!missing.is_empty())
            .then(|| format!("{}: no label {missing:?} on it (it has {seen:?})", u.series))
    }
}

impl Exposition {
    /// `by (…)` labels of `expr` that no series it uses carries.
    fn grouping_problems(&self, expr: &str, at: &str) -> Vec<String> {
        let series: Vec<Use> = uses(expr, at);
        grouping_labels(expr)
            .into_iter()
            .filter(|l| !TARGET_LABELS.contains(&l.as_str()))
            .filter(|l| {
                !series
                    .iter()
                    .any(|u| self.samples.get(&u.series).is_some_and(|s| s.contains(l)))
            })
            .map(|l| {
                let names: Vec<&str> = series.iter().map(|u| u.series.as_str()).collect();
                format!("by ({l}): none of {names:?} has that label ({at})")
            })
            .collect()
    }
}

// ---- the checks ---------------------------------------------------------------

#[test]
fn the_resolver_tells_real_series_from_near_misses() {
    let text = "# HELP switchyard_connections_active Open.\n\
                # TYPE switchyard_connections_active gauge\n\
                switchyard_connections_active 3\n\
                # TYPE switchyard_messages_in counter\n\
                switchyard_messages_in_total 7\n\
                # TYPE switchyard_connections_closed counter\n\
                switchyard_connections_closed_total{code=\"1000\"} 1\n\
                # TYPE switchyard_publish_to_deliver_seconds histogram\n\
                switchyard_publish_to_deliver_seconds_sum 0.5\n\
                switchyard_publish_to_deliver_seconds_count 2\n\
                switchyard_publish_to_deliver_seconds_bucket{le=\"0.1\"} 2\n\
                # EOF\n";
    let e = Exposition::parse(text);
    let check = |expr: &str| -> Vec<Option<String>> {
        uses(expr, "t").iter().map(|u| e.problem(u)).collect()
    };
    for ok in [
        "switchyard_connections_active > 0",
        "rate(switchyard_messages_in_total[5m])",
        "sum by (code) (rate(switchyard_connections_closed_total{code=\"1000\", job=~\"$job\"}[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(switchyard_publish_to_deliver_seconds_bucket[5m])))",
        "switchyard_publish_to_deliver_seconds_sum / switchyard_publish_to_deliver_seconds_count",
        "up{job=\"switchyard_x\"} # a label value is not a metric",
    ] {
        assert!(
            check(ok).iter().all(Option::is_none),
            "{ok}: {:?}",
            check(ok)
        );
    }
    for bad in [
        "switchyard_connections_active_total", // a gauge has no _total
        "rate(switchyard_messages_in[5m])",    // a counter's series is _total
        "switchyard_publish_to_deliver_seconds_total", // a histogram has no _total
        "switchyard_frame_size_bytes_bucket",  // not exposed at all
        "switchyard_connections_closed_total{reason=\"x\"}", // no such label
        "rate(switchyard_nope_total[1m])",
    ] {
        let got = check(bad);
        assert!(got.iter().any(Option::is_some), "{bad} resolved: {got:?}");
    }
    // `by (…)` labels must be on a series of the expression.
    for (expr, problems) in [
        (
            "sum by (code) (rate(switchyard_connections_closed_total[5m]))",
            0,
        ),
        (
            "sum by (instance, code) (rate(switchyard_connections_closed_total[5m]))",
            0,
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(switchyard_publish_to_deliver_seconds_bucket[5m])))",
            0,
        ),
        (
            "sum by (tenant) (rate(switchyard_connections_closed_total[5m]))",
            1,
        ),
        ("sum by (le, code) (switchyard_connections_active)", 2),
        (
            "sum(rate(switchyard_messages_in_total{job=\"by (x)\"}[5m]))",
            0,
        ),
    ] {
        assert_eq!(
            e.grouping_problems(expr, "t").len(),
            problems,
            "{expr}: {:?}",
            e.grouping_problems(expr, "t")
        );
    }
    // The parsers see through multi-line blocks, quotes and nested selectors.
    let exprs = alert_exprs(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          rate(switchyard_a_total{x=\"1,2\", y!~\"b\"}[5m])\n          > 0\n        for: 1m\n      - alert: B\n        expr: switchyard_b > 1\n",
    );
    assert_eq!(exprs.len(), 2, "{exprs:?}");
    let u = uses(&exprs[0].1, "A");
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].series, "switchyard_a_total");
    assert_eq!(u[0].labels.iter().cloned().collect::<Vec<_>>(), ["x", "y"]);
    assert_eq!(exprs[1], ("B".to_owned(), "switchyard_b > 1".to_owned()));
}

#[test]
fn the_recipes_cover_every_baseline() {
    let used = referenced();
    let alerts = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml"))
        .expect("alerts.yml");
    let exprs = alert_exprs(&alerts);
    assert!(exprs.len() >= 10, "alert expressions: {exprs:?}");
    // every alert but the scrape one watches a Switchyard metric
    for (alert, expr) in &exprs {
        assert!(
            alert == "SwitchyardNodeDown" || !uses(expr, alert).is_empty(),
            "{alert} uses no switchyard_ metric: {expr}"
        );
    }
    // the seed's baselines each have an alert on the metric that measures it
    for (what, series) in [
        ("error rate", "switchyard_messages_failed_total"),
        ("connection churn", "switchyard_connections_closed_total"),
        (
            "p99 delivery latency",
            "switchyard_publish_to_deliver_seconds_bucket",
        ),
        ("plugin failures", "switchyard_plugin_calls_total"),
        ("broker unavailable", "switchyard_broker_shards_up"),
    ] {
        assert!(
            used.iter()
                .any(|u| u.at.starts_with("alert ") && u.series == series),
            "no alert on {what} ({series})"
        );
    }
    assert!(
        exprs
            .iter()
            .any(|(_, e)| e.contains("switchyard_connections_closed_total{code=\"4008\"}")),
        "no alert on slow-consumer closes (code 4008)"
    );
    // the dashboard shows the same baselines
    let panels: BTreeSet<&str> = used
        .iter()
        .filter(|u| u.at.starts_with("panel "))
        .map(|u| u.series.as_str())
        .collect();
    for series in [
        "switchyard_connections_active",
        "switchyard_messages_failed_total",
        "switchyard_connections_closed_total",
        "switchyard_publish_to_deliver_seconds_bucket",
        "switchyard_plugin_calls_total",
        "switchyard_broker_shards_up",
    ] {
        assert!(panels.contains(series), "no dashboard panel on {series}");
    }
}

/// Opens a WebSocket with an `Origin` header; the HTTP status of a refusal.
async fn refused_with_origin(gw: &Gateway, origin: &str) -> Option<u16> {
    let mut req = gw.ws_url("/ws").into_client_request().expect("request");
    req.headers_mut()
        .insert("origin", origin.parse().expect("header value"));
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
        Ok(Err(tungstenite::Error::Http(r))) => Some(r.status().as_u16()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_alerts_and_the_dashboard_is_served() {
    let used = referenced();
    assert!(used.len() > 20, "parsed uses: {used:?}");
    let exprs = expressions();

    let redis = RedisServer::start();
    let plugins = scratch_dir("monitoring-plugins");
    let router = target_dir().join("plugins/namespace-router.wasm");
    assert!(
        router.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        router.display()
    );
    std::fs::copy(&router, plugins.join("router.wasm")).expect("copy router");
    std::fs::write(plugins.join("broken.wasm"), b"not a component").expect("broken plugin");
    let gw = Gateway::start(&format!(
        "[broker]\nkind = \"redis\"\nredis_urls = [{:?}]\n\
         [plugins]\ndir = {:?}\n\
         [tenants.default]\norigins = [\"https://app.example.test\"]\n\
         [tenants.default.policies.router]\nplugin = \"router\"\n",
        redis.url(),
        plugins.display().to_string(),
    ));

    // Traffic: a publish delivered through the router plugin and the broker,
    // a malformed frame, a refused upgrade, connections opened and closed.
    let mut sub = Client::connect(&gw.ws_url("/ws")).await;
    sub.subscribe(1, "room:1").await;
    let mut publisher = Client::connect(&gw.ws_url("/ws")).await;
    publisher
        .send_json(json!({"type":"publish","id":2,"channel":"room:1","data":"hi"}))
        .await;
    let m = sub.recv_type("message").await;
    assert_eq!(m["data"], "hi", "{m}");
    publisher.send_text("not json").await;
    let e = publisher.recv_type("error").await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(
        refused_with_origin(&gw, "https://evil.test").await,
        Some(403)
    );
    publisher
        .inner()
        .close(None)
        .await
        .expect("close the publisher");
    // the server's close reply; the close itself is counted below
    let _ = publisher.close_code().await;

    // Scrape until every referenced series resolves (the closes and the
    // plugin load failure are counted asynchronously), or report what is missing.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = gw.get("/metrics").await;
        assert_eq!(status, 200);
        let e = Exposition::parse(&text);
        let mut problems: BTreeSet<String> = used
            .iter()
            .filter_map(|u| e.problem(u).map(|p| format!("{} ({})", p, u.at)))
            .collect();
        for (at, expr) in &exprs {
            problems.extend(e.grouping_problems(expr, at));
        }
        if problems.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics used by deploy/prometheus/alerts.yml or deploy/grafana/switchyard.json \
             that the gateway does not serve:\n  {}\n\nGET /metrics:\n{text}",
            problems.into_iter().collect::<Vec<_>>().join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sub);
}
