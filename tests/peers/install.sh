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

# Python tools from PyPI, pinned, in a venv of their own (Debian's python3 refuses system-wide
# pip installs). tests/common/pki.rs runs them from $PEERS_VENV.
PEERS_VENV=/opt/certkeeper-peers/venv
declare -A pypi=(
  # DigiCert's RFC 5280 / CA/B Forum linter: lint_pkix_cert, lint_crl (tests/pki.rs)
  [pkilint]=0.13.3
)

missing=()
for cmd in "${!needed[@]}"; do
  # knotd and unbound live in /usr/sbin, which is not on every user's PATH.
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${needed[$cmd]}")
done
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# One package can provide several commands: ask for each once.
[ ${#missing[@]} -eq 0 ] || mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/peers/install.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

wanted=()
for package in "${!pypi[@]}"; do
  version=$("$PEERS_VENV/bin/python" -m pip show "$package" 2>/dev/null | sed -n 's/^Version: //p' || true)
  [ "$version" = "${pypi[$package]}" ] || wanted+=("$package==${pypi[$package]}")
done
if [ ${#wanted[@]} -gt 0 ]; then
  echo "tests/peers/install.sh: installing ${wanted[*]} into $PEERS_VENV" >&2
  [ -x "$PEERS_VENV/bin/python" ] || $sudo /usr/bin/python3 -m venv "$PEERS_VENV"
  $sudo "$PEERS_VENV/bin/python" -m pip install -q --disable-pip-version-check "${wanted[@]}"
fi
