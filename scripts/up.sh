#!/usr/bin/env bash
# The main job (README.md): on a fresh machine, installs what is missing (build
# packages, Java 17, Maven), builds orderflow and runs `orderflow up` — a managed
# Apache Kafka (fetched once into ~/.cache/orderflow), the schema registry, every
# processor, the HTTP and chat edges and the SQLite sink — until Ctrl-C. Arguments go
# to `orderflow up` (--data, --http, --kafka, --registry, --endpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orderflow/target}"
exec cargo run --release --locked -p orderflow -- up "$@"
