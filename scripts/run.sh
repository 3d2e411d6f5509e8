#!/usr/bin/env bash
# Runs the gateway with the first-party plugins built and loaded for the demo
# tenant (examples/configs/demo.toml). Extra arguments go to `switchyard serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2
scripts/build-plugins.sh
cargo build --release -p switchyard
exec target/release/switchyard serve --config examples/configs/demo.toml "$@"
