#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when something is missing.
# Idempotent and quiet when everything is present; needs root (or sudo) to install.
set -euo pipefail

# command -> package
declare -A needed=(
  [openssl]=openssl
  [kill]=procps
  [promtool]=prometheus
  # ACME and DNS peers (tests/common/peers.rs)
  [pebble]=pebble
  [pebble-challtestsrv]=pebble
  [knotd]=knot
  [kdig]=knot-dnsutils
  [nsupdate]=bind9-dnsutils
  [dig]=bind9-dnsutils
  [unbound]=unbound
  [lego]=lego
  [curl]=curl
  # fault injection into the running daemon (tests/store.rs)
  [strace]=strace
  [nginx]=nginx-light
)

missing=()
for cmd in "${!needed[@]}"; do
  # knotd and unbound live in /usr/sbin, which is not on every user's PATH.
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${needed[$cmd]}")
done
# One package can provide several commands: ask for each once.
[ ${#missing[@]} -eq 0 ] || mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "tests/peers/install.sh: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
