#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when something is missing.
# Idempotent and quiet when everything is present; needs root (or sudo) to install.
set -euo pipefail

# command -> package
declare -A needed=(
  [openssl]=openssl
  [kill]=procps
  [promtool]=prometheus
)

missing=()
for cmd in "${!needed[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needed[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "tests/peers/install.sh: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
