#!/usr/bin/env bash
# Fuzzing on stable Rust (docs/fuzzing.md): the protocol decoder, the
# StatePatch decoders, the config loader, the handshake validator and the LWW
# merge run generated and mutated inputs under catch_unwind; a panic or a
# broken property prints the input (hex) and the command that reproduces it,
# and the script exits non-zero.
#
#   scripts/fuzz.sh             full run: millions of inputs per target, release
#                               build, a fresh seed (printed), a few minutes
#   scripts/fuzz.sh --short     the test command's pass: fixed seed, at most 5 s
#                               per target (<= 30 s), the debug build that
#                               scripts/test.sh already made (overflow checks on)
#   scripts/fuzz.sh --target protocol --seed N --start I --iters 1
#                               reproduce one input
#
# --release / --debug choose the build; every other argument goes to
# switchyard-fuzz (--help lists them). FUZZ_SEED=N sets the seed too.
set -euo pipefail
cd "$(dirname "$0")/.."

short=0
build=""
args=()
for a in "$@"; do
  case "$a" in
    --release) build=release ;;
    --debug) build=debug ;;
    --short) short=1; args+=("$a") ;;
    *) args+=("$a") ;;
  esac
done
if [ -z "$build" ]; then
  if [ "$short" -eq 1 ]; then build=debug; else build=release; fi
fi

# --workspace --bin: features unified as in `cargo build --workspace`, so the
# test command reuses the binary its build step made instead of building
# another variant of the dependencies.
if [ "$build" = release ]; then
  cargo build -q --release --workspace --bin switchyard-fuzz
else
  cargo build -q --workspace --bin switchyard-fuzz
fi
exec "${CARGO_TARGET_DIR:-target}/$build/switchyard-fuzz" "${args[@]}"
