#!/usr/bin/env bash
# Builds every WebAssembly plugin into target/plugins/<name>.wasm (file stem =
# plugin name in the config):
#   - the first-party Rust plugins (plugins/ workspace, wasm32-wasip2, release)
#   - the Rust plugin template (examples/plugin-template)
#   - the Python router (examples/python-router, componentize-py in target/py-venv)
#   - the test fixtures, when tests/fixtures/plugins/build.sh exists
# Idempotent: cargo and an input hash skip what is up to date, and a .wasm is
# only replaced when its bytes changed (atomically: the plugins folder is
# watched by a running gateway). Fails loudly on the first error.
#
# Env: SWITCHYARD_SKIP_PYTHON=1 skips the Python router.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/plugins"
# One cargo target dir for the plugin workspace and the template: shared deps build once.
WASM_TARGET_DIR="$ROOT/target/wasm"
COMPONENTIZE_PY_VERSION="0.25.1"
TARGET=wasm32-wasip2

say() { printf 'build-plugins: %s\n' "$*"; }
die() { printf 'build-plugins: ERROR: %s\n' "$*" >&2; exit 1; }

# install_wasm SRC NAME: copies SRC to $OUT/NAME.wasm unless identical.
install_wasm() {
    local src="$1" name="$2" dst="$OUT/$2.wasm"
    [[ -f "$src" ]] || die "expected build output $src is missing"
    if [[ -f "$dst" ]] && cmp -s "$src" "$dst"; then
        say "  $name.wasm unchanged ($(stat -c %s "$dst") bytes)"
    else
        cp "$src" "$dst.tmp.$$"
        mv -f "$dst.tmp.$$" "$dst"
        say "  $name.wasm updated ($(stat -c %s "$dst") bytes)"
    fi
}

mkdir -p "$OUT"
command -v cargo >/dev/null || die "cargo not found (install rustup)"

# 1. The toolchain target (rust-toolchain.toml pins the toolchain and lists the target;
#    an older rustup may not install listed targets on its own).
if command -v rustup >/dev/null; then
    if ! (cd "$ROOT" && rustup target list --installed) | grep -qx "$TARGET"; then
        say "adding rust target $TARGET"
        (cd "$ROOT" && rustup target add "$TARGET")
    fi
fi

# 2. First-party plugins.
say "building plugins/ (release, $TARGET)"
(cd "$ROOT/plugins" && CARGO_TARGET_DIR="$WASM_TARGET_DIR" cargo build --locked --release --target "$TARGET" --quiet)
for manifest in "$ROOT"/plugins/*/Cargo.toml; do
    name="$(basename "$(dirname "$manifest")")"
    install_wasm "$WASM_TARGET_DIR/$TARGET/release/${name//-/_}.wasm" "$name"
done

# 3. The Rust template.
say "building examples/plugin-template"
(cd "$ROOT/examples/plugin-template" && CARGO_TARGET_DIR="$WASM_TARGET_DIR" cargo build --locked --release --target "$TARGET" --quiet)
install_wasm "$WASM_TARGET_DIR/$TARGET/release/plugin_template.wasm" plugin-template

# 4. The Python router (componentize-py in a venv under target/).
if [[ "${SWITCHYARD_SKIP_PYTHON:-0}" == 1 ]]; then
    say "skipping examples/python-router (SWITCHYARD_SKIP_PYTHON=1)"
else
    VENV="$ROOT/target/py-venv"
    CPY="$VENV/bin/componentize-py"
    if [[ ! -x "$CPY" ]] || [[ "$("$VENV/bin/pip" show componentize-py 2>/dev/null | sed -n 's/^Version: //p')" != "$COMPONENTIZE_PY_VERSION" ]]; then
        command -v python3 >/dev/null || die "python3 is needed for examples/python-router (or set SWITCHYARD_SKIP_PYTHON=1)"
        say "installing componentize-py $COMPONENTIZE_PY_VERSION into target/py-venv"
        python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
    PY_SRC="$ROOT/examples/python-router"
    STAMP="$ROOT/target/wasm/python-router.inputs"
    BUILT="$ROOT/target/wasm/python-router.wasm"
    inputs="$( (echo "$COMPONENTIZE_PY_VERSION --stub-wasi"; cat "$ROOT"/wit/*.wit "$PY_SRC"/app.py "$PY_SRC"/rules.py) | sha256sum | cut -d' ' -f1)"
    if [[ -f "$BUILT" && -f "$STAMP" && "$(cat "$STAMP")" == "$inputs" ]]; then
        say "examples/python-router up to date"
    else
        say "building examples/python-router (componentize-py, ~1 min)"
        mkdir -p "$(dirname "$BUILT")"
        rm -f "$STAMP"
        # --stub-wasi: no WASI imports at all (no filesystem, sockets, clocks,
        # random); the plugin uses only the gateway's `host` interface.
        "$CPY" -d "$ROOT/wit" -w router-plugin componentize --stub-wasi -p "$PY_SRC" app -o "$BUILT.tmp" >/dev/null
        mv -f "$BUILT.tmp" "$BUILT"
        echo "$inputs" > "$STAMP"
    fi
    install_wasm "$BUILT" python-router
fi

# 5. Test fixtures (written by the runtime's tests), when present.
if [[ -f "$ROOT/tests/fixtures/plugins/build.sh" ]]; then
    say "running tests/fixtures/plugins/build.sh"
    bash "$ROOT/tests/fixtures/plugins/build.sh"
fi

say "done: $OUT"
