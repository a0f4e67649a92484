#!/usr/bin/env bash
# Installs what building orderflow needs on a fresh Debian machine, once: a second run
# finds everything in place and installs nothing. Called by scripts/test.sh and
# scripts/up.sh; safe to run by hand.
set -euo pipefail

if [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust (https://rustup.rs), then run this again." >&2
  exit 1
fi

# Debian packages the build links against (native-tls for the registry client).
packages=(pkg-config libssl-dev)
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
