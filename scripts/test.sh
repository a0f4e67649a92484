#!/usr/bin/env bash
# The test command (README.md): installs what it needs, then checks formatting and
# lints and runs every test of the workspace. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# Build outside the clone so CI and later runs reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orderflow/target}"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one per binary, the last of
# which is often an empty doc-test run).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
