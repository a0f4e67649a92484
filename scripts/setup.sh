#!/usr/bin/env bash
# Installs what building and running orderflow needs on a fresh Debian machine,
# once: a second run finds everything in place and installs nothing. With --test
# (scripts/test.sh) also what the tests need: the database and cache servers and
# Python's confluent-kafka. Called by scripts/test.sh and scripts/up.sh; safe to
# run by hand.
set -euo pipefail
for_tests=false
if [ "${1:-}" = "--test" ]; then for_tests=true; fi

if [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust (https://rustup.rs), then run this again." >&2
  exit 1
fi

# Debian packages: what the build links against (native-tls for the registry
# client; librdkafka is built from source with make and a C compiler), Java 17+ to
# run the Kafka broker, Maven to fetch it once, and the database and cache servers
# the tests run against (scripts/services.sh starts them).
packages=(pkg-config libssl-dev build-essential zlib1g-dev)
if $for_tests; then packages+=(postgresql mariadb-server redis-server); fi
java_major=$(java -version 2>&1 | sed -n 's/.*version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -1 || true)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  packages+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null 2>&1 || packages+=(maven)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# Python's confluent-kafka (SchemaRegistryClient, AvroSerializer): the third-party
# client cli/tests/registry.rs checks the embedded schema registry with. Installed
# for the python3 the tests run; a Debian python3 without pip gets it first, and
# one that is externally managed (PEP 668) takes the package all the same.
if $for_tests && ! python3 -c "import confluent_kafka.schema_registry.avro" >/dev/null 2>&1; then
  echo "setup: installing confluent-kafka[avro] for python3" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip
  fi
  python3 -m pip install --quiet "confluent-kafka[avro]" \
    || python3 -m pip install --quiet --break-system-packages "confluent-kafka[avro]"
fi
