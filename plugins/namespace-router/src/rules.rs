//! Routing rules: parsed and validated once per config, applied per publish.

use serde::Deserialize;
use serde_json::{Map, Value};
use switchyard_sdk::{Denial, PublishRequest, Route, RouteTarget, glob_match};

/// Most targets one rule may fan out to.
pub const MAX_TARGETS: usize = 16;

/// How a rule rewrites the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wrap {
    /// `{"channel": <original channel>, "data": <payload>}`.
    Envelope,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    pattern: String,
    to: Option<Vec<String>>,
    #[serde(default)]
    drop: bool,
    wrap: Option<Wrap>,
    add: Option<Map<String, Value>>,
}

/// One validated rule.
#[derive(Debug)]
pub struct Rule {
    pattern: String,
    /// Empty = drop.
    to: Vec<String>,
    wrap: Option<Wrap>,
    add: Map<String, Value>,
}

impl TryFrom<RawRule> for Rule {
    type Error = String;

    fn try_from(r: RawRule) -> Result<Self, String> {
        let to = match (r.drop, r.to) {
            (true, Some(_)) => {
                return Err(format!(
                    "rule {:?}: drop and to exclude each other",
                    r.pattern
                ));
            }
            (true, None) => Vec::new(),
            (false, Some(to)) if to.is_empty() => {
                return Err(format!("rule {:?}: empty to (use drop = true)", r.pattern));
            }
            (false, Some(to)) => to,
            (false, None) => vec!["$channel".to_owned()],
        };
        if to.len() > MAX_TARGETS {
            return Err(format!(
                "rule {:?}: more than {MAX_TARGETS} targets",
                r.pattern
            ));
        }
        if to.iter().any(String::is_empty) {
            return Err(format!("rule {:?}: empty target channel", r.pattern));
        }
        Ok(Self {
            pattern: r.pattern,
            to,
            wrap: r.wrap,
            add: r.add.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    rules: Vec<RawRule>,
}

/// The rule list of a config.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawRules")]
pub struct Rules(Vec<Rule>);

impl TryFrom<RawRules> for Rules {
    type Error = String;

    fn try_from(r: RawRules) -> Result<Self, String> {
        r.rules
            .into_iter()
            .map(Rule::try_from)
            .collect::<Result<_, _>>()
            .map(Rules)
    }
}

/// Replaces `$channel`, `$namespace`, `$name`, `$principal`, `$client` in
/// `template` in one pass (substituted text is never substituted again); any
/// other `$` is kept as is.
fn substitute(template: &str, req: &PublishRequest) -> String {
    if !template.contains('$') {
        return template.to_owned();
    }
    let (namespace, name) = req.channel.split_once(':').unwrap_or((&req.channel, ""));
    // `$namespace` before `$name`: the latter is a prefix of the former.
    let vars: [(&str, &str); 5] = [
        ("$channel", &req.channel),
        ("$namespace", namespace),
        ("$name", name),
        ("$principal", &req.principal.id),
        ("$client", &req.client_id),
    ];
    let mut out = String::with_capacity(template.len() + req.channel.len());
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match vars.iter().find(|(var, _)| rest.starts_with(var)) {
            Some((var, value)) => {
                out.push_str(value);
                rest = &rest[var.len()..];
            }
            None => {
                out.push('$');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl Rules {
    /// Applies the first rule matching the publish's channel.
    pub fn route(&self, req: &PublishRequest) -> Result<Route, Denial> {
        let Some(rule) = self.0.iter().find(|r| glob_match(&r.pattern, &req.channel)) else {
            return Ok(Route::Direct);
        };
        if rule.to.is_empty() {
            return Ok(Route::dropped());
        }
        let data = rule.rewrite(req)?;
        let mut targets: Vec<RouteTarget> = Vec::with_capacity(rule.to.len());
        for t in &rule.to {
            let channel = substitute(t, req);
            if channel.is_empty() || targets.iter().any(|x| x.channel == channel) {
                continue;
            }
            targets.push(RouteTarget {
                channel,
                data_json: data.clone(),
            });
        }
        if data.is_none() && targets.len() == 1 && targets[0].channel == req.channel {
            return Ok(Route::Direct);
        }
        Ok(Route::To(targets))
    }
}

impl Rule {
    /// The rewritten payload, or `None` when the rule keeps it.
    fn rewrite(&self, req: &PublishRequest) -> Result<Option<String>, Denial> {
        if self.wrap.is_none() && self.add.is_empty() {
            return Ok(None);
        }
        let data: Value = serde_json::from_str(&req.data_json)
            .map_err(|e| Denial::Other(format!("payload is not JSON: {e}")))?;
        let mut data = match self.wrap {
            Some(Wrap::Envelope) => {
                let mut env = Map::new();
                env.insert("channel".into(), Value::String(req.channel.clone()));
                env.insert("data".into(), data);
                Value::Object(env)
            }
            None => data,
        };
        if let Value::Object(obj) = &mut data {
            for (k, v) in &self.add {
                let v = match v {
                    Value::String(s) => Value::String(substitute(s, req)),
                    other => other.clone(),
                };
                obj.insert(k.clone(), v);
            }
        }
        serde_json::to_string(&data)
            .map(Some)
            .map_err(|e| Denial::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: Value) -> Rules {
        serde_json::from_value(v).expect("valid rules")
    }

    fn demo() -> Rules {
        rules(json!({"rules": [
            {"match": "chat:*", "to": ["chat:all", "$channel"]},
            {"match": "spam:*", "drop": true},
            {"match": "log:*", "to": ["audit:$channel"], "wrap": "envelope"},
            {"match": "news:*", "add": {"source": "$namespace/$name", "by": "$principal", "n": 1}},
            {"match": "*", "to": ["$channel"]}
        ]}))
    }

    fn targets(r: Route) -> Vec<(String, Option<Value>)> {
        match r {
            Route::To(t) => t
                .into_iter()
                .map(|t| {
                    (
                        t.channel,
                        t.data_json.map(|d| serde_json::from_str(&d).unwrap()),
                    )
                })
                .collect(),
            Route::Direct => panic!("expected targets, got direct"),
        }
    }

    #[test]
    fn fan_out_drop_wrap_add_and_first_match_wins() {
        let r = demo();
        assert_eq!(
            targets(r.route(&PublishRequest::new("chat:lobby", "1")).unwrap()),
            [
                ("chat:all".to_owned(), None),
                ("chat:lobby".to_owned(), None)
            ]
        );
        assert!(
            r.route(&PublishRequest::new("spam:x", "1"))
                .unwrap()
                .is_drop()
        );
        assert_eq!(
            targets(
                r.route(&PublishRequest::new("log:app", r#"{"l":2}"#))
                    .unwrap()
            ),
            [(
                "audit:log:app".to_owned(),
                Some(json!({"channel":"log:app","data":{"l":2}}))
            )]
        );
        let mut req = PublishRequest::new("news:sport", r#"{"t":"goal"}"#);
        req.principal.id = "alice".into();
        assert_eq!(
            targets(r.route(&req).unwrap()),
            [(
                "news:sport".to_owned(),
                Some(json!({"t":"goal","source":"news/sport","by":"alice","n":1}))
            )]
        );
        // Catch-all to $channel alone without rewrite is just direct.
        assert!(matches!(
            r.route(&PublishRequest::new("other", "1")).unwrap(),
            Route::Direct
        ));
    }

    #[test]
    fn no_rules_is_direct_and_duplicates_collapse() {
        assert!(matches!(
            rules(json!({}))
                .route(&PublishRequest::new("a", "1"))
                .unwrap(),
            Route::Direct
        ));
        let r = rules(json!({"rules": [{"match": "a*", "to": ["$channel", "$channel", "x"]}]}));
        assert_eq!(
            targets(r.route(&PublishRequest::new("ab", "1")).unwrap()).len(),
            2
        );
    }

    #[test]
    fn substitution_without_namespace() {
        let r = rules(json!({"rules": [{"match": "*", "to": ["ns:$namespace", "name:$name"]}]}));
        let got: Vec<String> = targets(r.route(&PublishRequest::new("plain", "1")).unwrap())
            .into_iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(got, ["ns:plain", "name:"]);
    }

    #[test]
    fn substitution_is_single_pass() {
        let mut req = PublishRequest::new("a:b", "1");
        req.principal.id = "$channel".into();
        assert_eq!(
            substitute("$principal|$name|$namespace|$x|$", &req),
            "$channel|b|a|$x|$"
        );
    }

    #[test]
    fn invalid_rules_are_refused() {
        for bad in [
            json!({"rules": [{"match": "a", "drop": true, "to": ["b"]}]}),
            json!({"rules": [{"match": "a", "to": []}]}),
            json!({"rules": [{"match": "a", "wrap": "gift"}]}),
            json!({"rules": [{"to": ["b"]}]}),
            json!({"rules": [{"match": "a", "unknown": 1}]}),
            json!({"rulez": []}),
        ] {
            assert!(
                serde_json::from_value::<Rules>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn non_json_payload_with_rewrite_is_refused() {
        let r = demo();
        assert!(r.route(&PublishRequest::new("log:x", "not json")).is_err());
    }
}
