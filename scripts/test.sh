#!/usr/bin/env bash
# The test command (README.md): installs what it needs, then checks formatting and
# lints and runs every test of the workspace. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
# PostgreSQL, MariaDB and Redis for the SQL sink and cache tests: started here unless
# all three URLs already name servers elsewhere. Tests read TEST_POSTGRES_URL,
# TEST_MYSQL_URL and TEST_REDIS_URL, and fail (never skip) when one is missing.
if [ -z "${TEST_POSTGRES_URL:-}" ] || [ -z "${TEST_MYSQL_URL:-}" ] || [ -z "${TEST_REDIS_URL:-}" ]; then
  service_env="$(scripts/services.sh)"
  eval "$service_env"
fi
if [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# Build outside the clone so CI and later runs reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orderflow/target}"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The bench alone, as `cargo run -p orderflow-bench` builds it: orderflow-connectors
# without its sql and redis features, which the workspace build above always has.
cargo clippy -p orderflow-bench --locked -- -D warnings

# One Apache Kafka broker for the whole run (unless KAFKA_BROKERS names one): every
# test takes its own random topics, groups and transactional ids on it.
if [ -z "${KAFKA_BROKERS:-}" ]; then
  cargo build -p orderflow --locked
  broker_dir="$(mktemp -d -t orderflow-test-broker.XXXXXX)"
  "$CARGO_TARGET_DIR/debug/orderflow" broker --data "$broker_dir/data" --listen 127.0.0.1:0 \
    >"$broker_dir/endpoint" 2>"$broker_dir/stderr" &
  broker_pid=$!
  cleanup() {
    kill -INT "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    rm -rf "$broker_dir"
  }
  trap cleanup EXIT
  for _ in $(seq 1 300); do
    grep -q '^kafka: ' "$broker_dir/endpoint" && break
    if ! kill -0 "$broker_pid" 2>/dev/null; then
      echo "test.sh: the Kafka broker did not start:" >&2
      cat "$broker_dir/stderr" >&2
      exit 1
    fi
    sleep 1
  done
  KAFKA_BROKERS="$(sed -n 's/^kafka: //p' "$broker_dir/endpoint")"
  if [ -z "$KAFKA_BROKERS" ]; then
    echo "test.sh: the Kafka broker did not answer within 300 s:" >&2
    cat "$broker_dir/stderr" >&2
    exit 1
  fi
  export KAFKA_BROKERS
  echo "test.sh: Apache Kafka at $KAFKA_BROKERS" >&2
fi
log="$(mktemp)"
# Every test binary runs even when one fails, so a failure never hides another.
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary, the last of
# which is often an empty doc-test run).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
rm -f "$log"
exit "$status"
