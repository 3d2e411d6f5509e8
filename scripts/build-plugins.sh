#!/usr/bin/env bash
# Builds every WebAssembly plugin into target/plugins/<name>.wasm (file stem =
# plugin name in the config):
#   - the first-party Rust plugins (plugins/ workspace, wasm32-wasip2, release)
#   - the Rust plugin template (examples/plugin-template)
#   - the Python router (examples/python-router, componentize-py in target/py-venv)
#   - the JavaScript router and auth plugins (examples/js-router, examples/js-auth,
#     componentize-js from npm, installed by `npm ci` into target/js-tools)
#   - the C rate limiter (examples/c-rate-limit: wit-bindgen C bindings from
#     crates.io in target/tools, Debian's clang + wasi-libc, `jco new`)
#   - the test fixtures, when tests/fixtures/plugins/build.sh exists
# Idempotent: cargo and an input hash skip what is up to date, and a .wasm is
# only replaced when its bytes changed (atomically: the plugins folder is
# watched by a running gateway). Fails loudly on the first error.
#
# Env: SWITCHYARD_SKIP_PYTHON=1 skips the Python router, SWITCHYARD_SKIP_JS=1
# the JavaScript plugins, SWITCHYARD_SKIP_C=1 the C plugin.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/plugins"
# One cargo target dir for the plugin workspace and the template: shared deps build once.
WASM_TARGET_DIR="$ROOT/target/wasm"
COMPONENTIZE_PY_VERSION="0.25.1"
# The JavaScript tools are pinned in examples/js-router/package-lock.json.
WIT_BINDGEN_VERSION="0.63.0"
TARGET=wasm32-wasip2

say() { printf 'build-plugins: [%4ss] %s\n' "$SECONDS" "$*"; }
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

# 5. The JavaScript tools (componentize-js and jco, for the JavaScript plugins and
#    to make the C plugin's component), from examples/js-router's lock file.
JS_TOOLS="$ROOT/target/js-tools"
if [[ "${SWITCHYARD_SKIP_JS:-0}" != 1 || "${SWITCHYARD_SKIP_C:-0}" != 1 ]]; then
    command -v npm >/dev/null || die "node and npm are needed for the JavaScript and C plugins (Debian: apt-get install nodejs npm; or set SWITCHYARD_SKIP_JS=1 SWITCHYARD_SKIP_C=1)"
    for f in package.json package-lock.json; do
        cmp -s <(sed '/"name"\|"description"\|"build"/d' "$ROOT/examples/js-router/$f") \
               <(sed '/"name"\|"description"\|"build"/d' "$ROOT/examples/js-auth/$f") \
            || die "examples/js-router/$f and examples/js-auth/$f must pin the same tools"
    done
    lock_hash="$(cat "$ROOT/examples/js-router/package.json" "$ROOT/examples/js-router/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [[ ! -x "$JS_TOOLS/node_modules/.bin/componentize-js" || "$(cat "$JS_TOOLS/.inputs" 2>/dev/null)" != "$lock_hash" ]]; then
        say "installing componentize-js and jco into target/js-tools (npm ci, under a minute)"
        mkdir -p "$JS_TOOLS"
        rm -f "$JS_TOOLS/.inputs"
        cp "$ROOT/examples/js-router/package.json" "$ROOT/examples/js-router/package-lock.json" "$JS_TOOLS/"
        (cd "$JS_TOOLS" && npm ci --cache "$ROOT/target/npm-cache" --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$lock_hash" > "$JS_TOOLS/.inputs"
    fi
fi
COMPONENTIZE_JS="$JS_TOOLS/node_modules/.bin/componentize-js"
JCO="$JS_TOOLS/node_modules/.bin/jco"

# build_js NAME ENTRY WORLD: examples/NAME/ENTRY (and its imports) -> NAME.wasm.
build_js() {
    local name="$1" entry="$2" world="$3" src="$ROOT/examples/$1"
    local stamp="$ROOT/target/wasm/$name.inputs" built="$ROOT/target/wasm/$name.wasm" inputs
    inputs="$( (echo "$world"; cat "$JS_TOOLS/.inputs" "$ROOT"/wit/*.wit; find "$src" -maxdepth 1 -name '*.js' ! -name '*.test.js' | sort | xargs cat) | sha256sum | cut -d' ' -f1)"
    if [[ -f "$built" && -f "$stamp" && "$(cat "$stamp")" == "$inputs" ]]; then
        say "examples/$name up to date"
    else
        say "building examples/$name (componentize-js, under a minute)"
        mkdir -p "$(dirname "$built")"
        rm -f "$stamp"
        # --disable: no WASI imports at all (no stdio, random, clocks, http); the
        # plugin uses only the gateway's `host` interface.
        (cd "$src" && "$COMPONENTIZE_JS" "$entry" --wit "$ROOT/wit" --world-name "$world" \
            --disable stdio random clocks http fetch-event --out "$built.tmp" >/dev/null)
        mv -f "$built.tmp" "$built"
        echo "$inputs" > "$stamp"
    fi
    install_wasm "$built" "$name"
}

# 6. The JavaScript plugins.
if [[ "${SWITCHYARD_SKIP_JS:-0}" == 1 ]]; then
    say "skipping examples/js-router and examples/js-auth (SWITCHYARD_SKIP_JS=1)"
else
    build_js js-router router.js router-plugin
    build_js js-auth auth.js auth-plugin
fi

# 7. The C rate limiter: wit-bindgen C bindings, clang --target=wasm32-wasi with
#    Debian's wasi-libc (a core module importing no WASI function), `jco new`.
if [[ "${SWITCHYARD_SKIP_C:-0}" == 1 ]]; then
    say "skipping examples/c-rate-limit (SWITCHYARD_SKIP_C=1)"
else
    WIT_BINDGEN="$ROOT/target/tools/bin/wit-bindgen"
    if [[ ! -x "$WIT_BINDGEN" ]] || [[ "$("$WIT_BINDGEN" --version 2>/dev/null)" != *" $WIT_BINDGEN_VERSION"* ]]; then
        say "installing wit-bindgen-cli $WIT_BINDGEN_VERSION into target/tools (cargo install, minutes, once)"
        # Only the C generator: the default features build every language (~4x longer).
        cargo install --quiet --root "$ROOT/target/tools" --locked --no-default-features --features c "wit-bindgen-cli@$WIT_BINDGEN_VERSION"
    fi
    if ! command -v clang >/dev/null || ! command -v wasm-ld >/dev/null || [[ ! -f /usr/lib/wasm32-wasi/libc.a ]] \
        || ! compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            say "installing clang, lld, wasi-libc, libclang-rt-dev-wasm32 (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang lld wasi-libc libclang-rt-dev-wasm32 >/dev/null \
                || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang lld wasi-libc libclang-rt-dev-wasm32 >/dev/null; } \
                || die "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 failed"
        else
            die "examples/c-rate-limit needs clang, lld, wasi-libc and libclang-rt-dev-wasm32 (Debian packages), or set SWITCHYARD_SKIP_C=1"
        fi
    fi
    C_SRC="$ROOT/examples/c-rate-limit"
    C_OUT="$ROOT/target/wasm/c-rate-limit"
    STAMP="$C_OUT.inputs"
    BUILT="$C_OUT.wasm"
    inputs="$( (echo "$WIT_BINDGEN_VERSION"; clang --version | head -1; cat "$JS_TOOLS/.inputs" "$ROOT"/wit/*.wit "$C_SRC"/Makefile "$C_SRC"/*.c "$C_SRC"/*.h) | sha256sum | cut -d' ' -f1)"
    if [[ -f "$BUILT" && -f "$STAMP" && "$(cat "$STAMP")" == "$inputs" ]]; then
        say "examples/c-rate-limit up to date"
    else
        say "building examples/c-rate-limit (wit-bindgen c, clang, jco new)"
        rm -f "$STAMP"
        make --no-print-directory -s -C "$C_SRC" OUT="$C_OUT" WIT="$ROOT/wit" \
            WIT_BINDGEN="$WIT_BINDGEN" COMPONENT_NEW="$JCO new" "$C_OUT/c_rate_limit.wasm" >/dev/null
        cp "$C_OUT/c_rate_limit.wasm" "$BUILT"
        echo "$inputs" > "$STAMP"
    fi
    install_wasm "$BUILT" c-rate-limit
fi

# 8. Test fixtures (written by the runtime's tests), when present.
if [[ -f "$ROOT/tests/fixtures/plugins/build.sh" ]]; then
    say "running tests/fixtures/plugins/build.sh"
    bash "$ROOT/tests/fixtures/plugins/build.sh"
fi

say "done: $OUT"
