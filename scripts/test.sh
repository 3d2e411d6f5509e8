#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, builds the
# plugins once, builds the binary, runs every test. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
step() { printf '\n==> %s  [%s UTC, %ss in]\n' "$*" "$(date -u +%T)" "$SECONDS"; }

step "toolchain (rust-toolchain.toml)"
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
rustup target list --installed | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt

step "system packages"
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)   # tests/brokers.rs (JetStream, Debian package)
[ -x /usr/bin/chromium ] || need+=(chromium)   # tests/browser.rs (headless)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
redis-server --version
nats-server --version
# playwright-core for tests/browser.rs, from the committed lockfile (drives /usr/bin/chromium)
[ -f tests/js/node_modules/playwright-core/package.json ] || (cd tests/js && npm ci --no-audit --no-fund)

# Built in the background while the plugins and the workspace build (cached
# under target/test-brokers after the first run); waited for before the tests.
step "test brokers (tansu for tests/kafka.rs; background)"
mkdir -p target
scripts/test-brokers.sh > target/test-brokers.log 2>&1 &
brokers_pid=$!

step "format"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

step "plugins (wasm32-wasip2, built once)"
scripts/build-plugins.sh

step "build"
cargo build --workspace --bins
scripts/check-deploy.sh   # deploy/ recipes: nginx -t, haproxy -c, Kubernetes schemas, config check (installs nginx, haproxy)

step "lint"
cargo clippy --workspace --all-targets -- -D warnings

step "test brokers (waiting for the background build)"
if ! wait "$brokers_pid"; then
  cat target/test-brokers.log
  exit 1
fi
tail -1 target/test-brokers.log

step "tests"
cargo test --workspace -- --test-threads "${TEST_THREADS:-4}"

step "fuzz (short): decoders, config loader, handshake, LWW merge (docs/fuzzing.md)"
scripts/fuzz.sh --short

step "first-party plugin unit tests (native, against the SDK's host stand-in)"
(cd plugins && CARGO_TARGET_DIR="$PWD/../target/plugins-native" cargo test)

step "plugin examples' own unit tests (Python router rules, JavaScript router and auth, C rate-limit config)"
python3 -m unittest discover -s examples/python-router -p 'test_*.py'
(cd examples/js-router && node --test)
(cd examples/js-auth && node --test)
make -s -C examples/c-rate-limit test OUT="$PWD/target/c-rate-limit-native"

step "all tests passed"
