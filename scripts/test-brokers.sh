#!/usr/bin/env bash
# Test brokers that no Debian package ships, built once and cached under
# target/test-brokers (tests/harness finds them there). Its own install root:
# scripts/build-plugins.sh installs into target/tools meanwhile, and two
# `cargo install`s into one root wait for each other.
#   tansu — a Kafka-compatible broker in Rust (crates.io), with its SQLite
#   storage engine so records and committed offsets survive a restart
#   (tests/kafka.rs). ~7 min on 2 cores the first time, nothing after.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${CARGO_TARGET_DIR:-target}/test-brokers"
TANSU_VERSION=0.6.0
if [ -x "$tools/bin/tansu" ] && "$tools/bin/tansu" --version 2>/dev/null | grep -q " $TANSU_VERSION"; then
  echo "tansu $TANSU_VERSION: cached in $tools/bin"
  exit 0
fi
mkdir -p "$tools"
# Its own target dir (removed after): nothing of it lands in the workspace's.
cargo install "tansu@$TANSU_VERSION" --locked --features libsql \
  --root "$tools" --target-dir "$tools/build" --quiet
rm -rf "$tools/build"
"$tools/bin/tansu" --version
