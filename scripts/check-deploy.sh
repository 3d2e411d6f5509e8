#!/usr/bin/env bash
# Validates the deploy/ recipes without root paths, a cluster or the network
# beyond the package registries:
#   - nginx -t on deploy/nginx/nginx.conf, as written and with its commented
#     edge option (limit_req, Origin allow-list) enabled, under a temp prefix;
#   - haproxy -c on deploy/haproxy/haproxy.cfg;
#   - every Kubernetes object against the Kubernetes schemas, offline
#     (kubernetes-validate --strict from PyPI ships them; pinned below);
#   - `switchyard config check` on deploy/config/*.toml and on the ConfigMap's
#     embedded switchyard.toml;
#   - promtool (Debian package prometheus): `check config` on
#     deploy/prometheus/prometheus.yml, `check rules` on alerts.yml, and
#     `test rules` on alerts.test.yml (every alert fires on its condition);
#   - the Grafana dashboard deploy/grafana/switchyard.json (JSON, unique panel
#     ids, every query on the $datasource variable);
#   - structural checks that tie them together (every endpoint of DESIGN §3 is
#     proxied, upgrade headers, SSE unbuffered, long-poll timeout > the 30s wait,
#     probes on /readyz and /healthz, grace period > preStop + drain).
# tests/deploy.rs runs the nginx and HAProxy recipes in front of real gateways;
# tests/monitoring.rs checks every metric of the alerts and the dashboard
# against a real gateway's /metrics.
# Installs nginx and haproxy (apt), unpacks promtool from the Debian package
# prometheus (not installed: that would start a Prometheus server) and a venv with kubernetes-validate
# (target/deploy-tools) when missing. Used by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
KV_VERSION=1.37.0
TARGET=${CARGO_TARGET_DIR:-target}
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
TOOLS="$TARGET/deploy-tools"
say() { printf '  %s\n' "$*"; }

echo "==> deploy recipes (nginx -t, haproxy -c, kubernetes schema, config check, promtool, grafana)"

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

# promtool: on PATH, else unpacked from the Debian package `prometheus` into
# $TOOLS (installing the package would also start a Prometheus service).
PROMTOOL=$(command -v promtool || true)
if [ -z "$PROMTOOL" ]; then
  PROMTOOL="$TOOLS/prometheus/usr/bin/promtool"
  if [ ! -x "$PROMTOOL" ]; then
    mkdir -p "$TOOLS/prometheus"
    rm -f "$TOOLS"/prometheus_*.deb
    if ! (cd "$TOOLS" && apt-get download prometheus >/dev/null 2>&1); then
      SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
      $SUDO apt-get update -qq
      (cd "$TOOLS" && apt-get download prometheus >/dev/null)
    fi
    dpkg-deb -x "$TOOLS"/prometheus_*.deb "$TOOLS/prometheus"
    rm -f "$TOOLS"/prometheus_*.deb
  fi
fi

VENV="$TOOLS/venv"
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KV_VERSION"; then
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

BIN="$TARGET/debug/switchyard"
[ -x "$BIN" ] || cargo build -q -p switchyard

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# nginx: as written, then with the edge option enabled ("#edge " prefixes removed).
NGINX=deploy/nginx/nginx.conf
sed -E 's/^([[:space:]]*)#edge /\1/' "$NGINX" >"$work/nginx-edge.conf"
grep -q 'limit_req zone=ws_rate' "$work/nginx-edge.conf"
for conf in "$PWD/$NGINX" "$work/nginx-edge.conf"; do
  mkdir -p "$work/prefix"
  nginx -t -q -p "$work/prefix/" -e stderr -c "$conf"
  say "nginx -t: ok ($(basename "$conf"))"
done

if ! out=$(haproxy -c -f deploy/haproxy/haproxy.cfg 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
say "haproxy -c: ok (deploy/haproxy/haproxy.cfg)"

"$VENV/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml
say "kubernetes-validate --strict (Kubernetes $KV_VERSION schemas, offline): ok ($(echo deploy/kubernetes/*.yaml))"

# Configs: the recipe's TOML files and the ConfigMap's embedded one.
"$VENV/bin/python" - "$work" deploy/kubernetes/*.yaml <<'PY'
import sys, yaml, pathlib
out = pathlib.Path(sys.argv[1])
for f in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(f)):
        if doc and doc.get("kind") == "ConfigMap":
            for key, text in doc.get("data", {}).items():
                if key.endswith(".toml"):
                    (out / f"configmap-{doc['metadata']['name']}-{key}").write_text(text)
PY
for cfg in deploy/config/*.toml "$work"/configmap-*.toml; do
  if ! out=$("$BIN" config check "$cfg" 2>&1); then
    printf '%s\n' "$out" | tail -5 >&2
    exit 1
  fi
  say "switchyard config check: ok ($(basename "$cfg"))"
done
# The annotated example the binary prints must pass its own check.
if ! out=$("$BIN" config example | "$BIN" config check - 2>&1 >/dev/null); then
  printf '%s\n' "$out" >&2
  exit 1
fi
say "switchyard config example | switchyard config check -: ok"
# The NATS server recipe (nats-server from scripts/test.sh): `nats-server -t`.
if command -v nats-server >/dev/null 2>&1; then
  if ! out=$(SERVER_NAME=nats-0 nats-server -t -c deploy/nats/nats-server.conf 2>&1); then
    printf '%s\n' "$out" >&2
    exit 1
  fi
  say "nats-server -t: ok (deploy/nats/nats-server.conf)"
fi

# Prometheus: the scrape config (it loads alerts.yml), the rules, and the
# rules' unit tests, run on a copy without annotations (the tests pin
# expressions, `for` and labels; `check rules` validates the templates).
PROM=deploy/prometheus
if ! out=$("$PROMTOOL" check config "$PROM/prometheus.yml" 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
say "promtool check config: ok ($PROM/prometheus.yml)"
if ! out=$("$PROMTOOL" check rules "$PROM/alerts.yml" 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
say "promtool check rules: ok ($PROM/alerts.yml: $(grep -c -- '- alert:' "$PROM/alerts.yml") alerts)"
mkdir -p "$work/prom"
"$VENV/bin/python" - "$PROM/alerts.yml" "$work/prom/alerts.yml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for group in doc["groups"]:
    for rule in group["rules"]:
        rule.pop("annotations", None)
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
# every alert has a unit test that expects it to fire
names = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
tests = yaml.safe_load(open(sys.argv[1].replace("alerts.yml", "alerts.test.yml")))
firing = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
if names - firing:
    sys.exit(f"alerts without a test that makes them fire in alerts.test.yml: {sorted(names - firing)}")
PY
cp "$PROM/alerts.test.yml" "$work/prom/"
if ! out=$("$PROMTOOL" test rules "$work/prom/alerts.test.yml" 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
say "promtool test rules: ok ($PROM/alerts.test.yml: every alert fires in a test)"

"$VENV/bin/python" - "$work" <<'PY'
"""Structural checks across the recipes (what `nginx -t` and the schemas cannot see)."""
import pathlib, re, sys, tomllib, yaml

work = pathlib.Path(sys.argv[1])
failures = []
def check(ok, what):
    if not ok:
        failures.append(what)

def seconds(v):
    v = str(v).strip()
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", v)
    if not m:
        raise ValueError(f"duration {v!r}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]

# Gateway facts the recipes must respect (fallback.rs MAX_WAIT; the recipe config).
LONG_POLL_MAX_WAIT = 30
node_cfg = tomllib.loads(pathlib.Path("deploy/config/multi-node.toml").read_text())
HEARTBEAT = seconds(node_cfg["limits"]["heartbeat_interval"])
COOKIE = node_cfg["server"]["sticky_cookie"]

# ---- nginx: a small block parser ---------------------------------------------
def parse_nginx(text):
    text = re.sub(r"#[^\n]*", "", text)
    tokens = re.findall(r"\"[^\"]*\"|'[^']*'|[{};]|[^\s{};]+", text)
    def block(i):
        items = []
        cur = []
        while i < len(tokens):
            t = tokens[i]
            if t == ";":
                items.append((cur, None)); cur = []
            elif t == "{":
                body, i = block(i + 1)
                items.append((cur, body)); cur = []
            elif t == "}":
                return items, i
            else:
                cur.append(t)
            i += 1
        return items, i
    return block(0)[0]

def directives(items, name):
    return [(args[1:], body) for args, body in items if args and args[0] == name]

def one(items, name):
    d = directives(items, name)
    return d[0][0] if d else None

for label, path in [("nginx", pathlib.Path("deploy/nginx/nginx.conf")),
                    ("nginx+edge", work / "nginx-edge.conf")]:
    conf = parse_nginx(path.read_text())
    http = directives(conf, "http")[0][1]
    upstreams = {a[0]: b for a, b in directives(http, "upstream")}
    servers = [b for _, b in directives(http, "server")]
    check(len(servers) == 1, f"{label}: one server block")
    srv = servers[0]
    headers = {a[0].lower(): " ".join(a[1:]) for a, _ in directives(srv, "proxy_set_header")}
    check(one(srv, "proxy_http_version") == ["1.1"], f"{label}: proxy_http_version 1.1")
    check(headers.get("upgrade") == "$http_upgrade", f"{label}: Upgrade $http_upgrade")
    check(headers.get("connection") == "$connection_upgrade", f"{label}: Connection $connection_upgrade")
    check(headers.get("x-real-ip") == "$remote_addr", f"{label}: X-Real-IP $remote_addr")
    check("x-forwarded-for" in headers, f"{label}: X-Forwarded-For set")
    maps = {a[1]: (a[0], b) for a, b in directives(http, "map")}
    check("$connection_upgrade" in maps, f"{label}: map for $connection_upgrade")
    source, sticky = maps.get("$switchyard_upstream", (None, []))
    check(source == f"$cookie_{COOKIE}", f"{label}: sticky map keyed by $cookie_{COOKIE}")
    for args, _ in sticky:
        check(args[1] in upstreams, f"{label}: sticky map target {args[1]} is an upstream")
    check(any(a[0] == "ip_hash" for a, _ in upstreams.get("switchyard", [])), f"{label}: ip_hash by default")
    locs = []
    for args, body in directives(srv, "location"):
        exact = args[0] == "="
        locs.append((exact, args[-1], body))
        check(not directives(body, "proxy_set_header"),
              f"{label}: location {args[-1]} sets proxy_set_header (it would lose the server's headers)")
    def match(uri):
        exact = [l for l in locs if l[0] and l[1] == uri]
        if exact:
            return exact[0]
        pref = [l for l in locs if not l[0] and uri.startswith(l[1])]
        return max(pref, key=lambda l: len(l[1])) if pref else None
    def timeout(body, name):
        v = one(body, name)
        return seconds(v[0]) if v else 60
    endpoints = {  # DESIGN §3 → what the location must do
        "/ws": "ws", "/ws/acme": "ws", "/yjs/acme/room-1": "ws", "/echo": "ws",
        "/sse": "sse", "/sse/acme": "sse", "/sse/session/abc": "http",
        "/poll": "http", "/poll/acme": "http", "/poll/session/abc": "poll",
        "/api/publish": "http", "/api/send": "http", "/api/documents/doc:1": "http",
        "/metrics": "ops", "/healthz": "ops", "/readyz": "ops", "/admin/plugins": "ops",
    }
    for uri, kind in endpoints.items():
        loc = match(uri)
        if loc is None or not directives(loc[2], "proxy_pass"):
            failures.append(f"{label}: {uri} is not proxied")
            continue
        body = loc[2]
        if kind == "ws":
            check(timeout(body, "proxy_read_timeout") > HEARTBEAT,
                  f"{label}: {uri} read timeout > heartbeat_interval ({HEARTBEAT}s)")
        if kind == "sse":
            check(one(body, "proxy_buffering") == ["off"], f"{label}: {uri} proxy_buffering off")
            check(timeout(body, "proxy_read_timeout") >= 600, f"{label}: {uri} read timeout >= 10m")
        if kind == "poll":
            check(timeout(body, "proxy_read_timeout") > LONG_POLL_MAX_WAIT,
                  f"{label}: {uri} read timeout > long-poll max wait ({LONG_POLL_MAX_WAIT}s)")
            check(one(body, "proxy_buffering") == ["off"], f"{label}: {uri} proxy_buffering off")
        if kind == "ops":
            check(one(body, "deny") == ["all"], f"{label}: {uri} restricted (deny all)")
    for uri in ["/", "/nope"]:
        loc = match(uri)
        check(loc is not None and not directives(loc[2], "proxy_pass"), f"{label}: {uri} not proxied")
    if label == "nginx+edge":
        check(any(a[0] == "limit_req_zone" for a, _ in http), "edge: limit_req_zone in http")
        for uri in ["/ws", "/yjs/a/b", "/sse", "/poll"]:
            body = match(uri)[2]
            check(directives(body, "limit_req"), f"edge: {uri} has limit_req")
            check(directives(body, "if"), f"edge: {uri} has the Origin rule")
        for uri in ["/poll/session/x", "/sse/session/x"]:
            body = match(uri)[2]
            check(not directives(body, "limit_req"), f"edge: {uri} (an open session) is not rate limited")
            check(directives(body, "if"), f"edge: {uri} has the Origin rule")

# ---- HAProxy -----------------------------------------------------------------
ha = pathlib.Path("deploy/haproxy/haproxy.cfg").read_text()
ha_lines = [re.sub(r"\s+#.*", "", l).strip() for l in ha.splitlines() if l.strip() and not l.strip().startswith("#")]
def ha_has(pattern):
    return any(re.search(pattern, l) for l in ha_lines)
check(ha_has(r"^http-check send meth GET uri /readyz$"), "haproxy: health check GET /readyz")
check(ha_has(r"^option httpchk$"), "haproxy: option httpchk")
check(ha_has(rf"^cookie {COOKIE} insert indirect nocache preserve"), f"haproxy: sticky cookie {COOKIE} (insert, preserve)")
for l in ha_lines:
    if l.startswith("server "):
        check(re.search(r"\bcookie \S+", l) is not None, f"haproxy: {l!r} has a cookie value")
def ha_timeout(name):
    for l in ha_lines:
        m = re.match(rf"^timeout {name} (\S+)$", l)
        if m:
            return seconds(m.group(1))
check((ha_timeout("server") or 0) > LONG_POLL_MAX_WAIT, "haproxy: timeout server > long-poll max wait")
check((ha_timeout("server") or 0) > HEARTBEAT, "haproxy: timeout server > heartbeat_interval")
check((ha_timeout("tunnel") or 0) >= 600, "haproxy: timeout tunnel for WebSockets")
check(ha_has(r"set-timeout server \S+ if \{ path /sse \}"), "haproxy: SSE streams get a long server timeout")
check(ha_has(r"set-header X-Forwarded-For %\[src\]") and ha_has(r"set-header X-Real-IP %\[src\]"),
      "haproxy: X-Forwarded-For / X-Real-IP set")
for p in ["/ws", "/sse", "/poll", "/echo", "/healthz", "/readyz", "/metrics"]:
    check(ha_has(rf"^acl gateway_path path .*{re.escape(p)}( |$)"), f"haproxy: {p} routed")
for p in ["/ws/", "/yjs/", "/sse/", "/poll/", "/api/", "/admin/"]:
    check(ha_has(rf"^acl gateway_path path_beg .*{re.escape(p)}( |$)"), f"haproxy: {p}* routed")

# ---- Kubernetes --------------------------------------------------------------
for f in sorted(pathlib.Path("deploy/kubernetes").glob("*.yaml")):
    docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    cm = kinds.get("ConfigMap")
    dep = kinds.get("Deployment")
    check(cm is not None and dep is not None, f"{f}: a ConfigMap and a Deployment")
    cfg = tomllib.loads(cm["data"]["switchyard.toml"])
    server = cfg.get("server", {})
    port = int(server.get("listen", "127.0.0.1:8080").rsplit(":", 1)[1])
    check(server.get("listen", "").startswith("0.0.0.0:"), f"{f}: config listens on all interfaces")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
    check(ports.get("http") == port, f"{f}: containerPort http = config listen port {port}")
    rp, lp = c.get("readinessProbe", {}), c.get("livenessProbe", {})
    check(rp.get("httpGet", {}).get("path") == "/readyz", f"{f}: readinessProbe GET /readyz")
    check(lp.get("httpGet", {}).get("path") == "/healthz", f"{f}: livenessProbe GET /healthz")
    for name, probe in [("readiness", rp), ("liveness", lp)]:
        check(probe.get("httpGet", {}).get("port") in ("http", port), f"{f}: {name} probe on the gateway port")
    pre = c.get("lifecycle", {}).get("preStop", {})
    pre_s = pre.get("sleep", {}).get("seconds", 0)
    if "exec" in pre:
        cmd = pre["exec"]["command"]
        pre_s = int(cmd[1]) if cmd[0] == "sleep" else 0
    drain = seconds(server.get("drain_timeout", "30s"))
    grace_cfg = seconds(server.get("drain_grace", "0s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > pre_s + grace_cfg + drain,
          f"{f}: terminationGracePeriodSeconds ({grace}) > preStop ({pre_s}) + drain_grace ({grace_cfg}) + drain_timeout ({drain})")
    env = {e["name"] for e in c.get("env", [])}
    check("SWITCHYARD_SERVER__NODE_ID" in env, f"{f}: a distinct node id per pod")
    svc = kinds.get("Service")
    check(svc is not None and svc["spec"].get("sessionAffinity") == "ClientIP", f"{f}: Service sessionAffinity ClientIP")
    ing = kinds.get("Ingress")
    if ing:
        ann = ing["metadata"].get("annotations", {})
        check(int(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60")) > LONG_POLL_MAX_WAIT,
              f"{f}: ingress read timeout > long-poll wait")
        check(ann.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", f"{f}: ingress proxy-buffering off")
        paths = {p["path"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]}
        for p in ["/ws", "/yjs", "/sse", "/poll", "/api"]:
            check(p in paths, f"{f}: ingress routes {p}")
        check(not paths & {"/metrics", "/admin", "/healthz", "/readyz"}, f"{f}: ingress exposes no operator endpoint")

# ---- Grafana -----------------------------------------------------------------
import json
dash = json.loads(pathlib.Path("deploy/grafana/switchyard.json").read_text())
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
check(variables.get("datasource", {}).get("type") == "datasource", "grafana: a $datasource variable")
def all_panels(ps):
    for p in ps:
        yield p
        yield from all_panels(p.get("panels", []))
panels = list(all_panels(dash["panels"]))
ids = [p["id"] for p in panels]
check(len(ids) == len(set(ids)), f"grafana: panel ids are unique ({ids})")
for p in panels:
    if p["type"] == "row":
        continue
    check(bool(p.get("targets")), f"grafana: panel {p['title']!r} has queries")
    refs = [t.get("refId") for t in p.get("targets", [])]
    check(len(refs) == len(set(refs)) and all(refs), f"grafana: panel {p['title']!r} refIds unique")
    for t in p.get("targets", []):
        check(t.get("datasource", {}).get("uid") == "${datasource}", f"grafana: {p['title']!r} queries $datasource")
        check("switchyard_" in t.get("expr", ""), f"grafana: {p['title']!r} queries a switchyard metric")
    g = p["gridPos"]
    check(g["x"] + g["w"] <= 24, f"grafana: panel {p['title']!r} fits the 24-column grid")

if failures:
    print("deploy recipes: FAILED", file=sys.stderr)
    for x in failures:
        print(f"  - {x}", file=sys.stderr)
    sys.exit(1)
print("  structural checks: ok (nginx: every DESIGN §3 endpoint, upgrade/forwarded headers, SSE/long-poll "
      "timeouts, sticky map, edge option; haproxy: /readyz check, sticky cookie, timeouts; "
      "kubernetes: probes, ports, grace vs drain; grafana: datasource, panel ids)")
PY
echo "deploy recipes: ok"
