#!/usr/bin/env bash
# Set up a Debian 12 machine to develop and test ipsecd from this checkout.  Run as root:
#
#   sudo scripts/setup-dev.sh
#
# Installs what the tests use from Debian (strongSwan's charon with the kernel-libipsec plugin
# as the interop peer, iperf3, tcpdump, nftables, debootstrap for the stock-Debian install test,
# systemd-analyze for the unit checks) and makes .venv in the checkout with Debian's
# /usr/bin/python3 (PEP 668: Debian's python refuses `pip install` outside a venv), holding
# ipsecd in editable mode with the test extras.  Then, as root:
#
#   .venv/bin/python -m pytest -q
#   .venv/bin/ipsecd demo
#
# Safe to run again.  A service install is scripts/install.sh, not this.
# Environment: IPSECD_NO_APT=1 skips apt-get; IPSECD_PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${IPSECD_PYTHON:-/usr/bin/python3}
say() { echo "setup-dev.sh: $*"; }
die() { echo "setup-dev.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (sudo scripts/setup-dev.sh)"

case "${IPSECD_NO_APT:-}" in
  1|yes|true|on) ;;
  *)
    say "apt: installing the test tools"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev ca-certificates git \
      iproute2 iputils-ping procps kmod util-linux iperf3 nftables tcpdump \
      strongswan-charon strongswan-swanctl libcharon-extra-plugins \
      libstrongswan-standard-plugins libstrongswan-extra-plugins strongswan-pki \
      debootstrap systemd groff-base >/dev/null
    ;;
esac
[ -x "$PYTHON" ] || die "$PYTHON not found (apt-get install python3 python3-venv)"

want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  rm -rf .venv
  "$PYTHON" -m venv .venv || die "$PYTHON -m venv failed (apt-get install python3-venv)"
fi
.venv/bin/python -m pip --disable-pip-version-check -q install -e '.[test]'

# promtool, for `promtool check metrics` (tests/unit/test_metrics.py; it must not skip in CI).
# Debian 12 ships it only inside the prometheus server package (19 MB, 5 s to fetch): only
# promtool is taken out of it, into .venv/bin, so no server is installed or started.
case "${IPSECD_NO_APT:-}" in
  1|yes|true|on) ;;
  *)
    if [ ! -x .venv/bin/promtool ] && ! command -v promtool >/dev/null; then
      say "apt: promtool from Debian's prometheus package"
      deb=$(mktemp -d)
      (cd "$deb" && apt-get -o APT::Sandbox::User=root -qq download prometheus >/dev/null)
      dpkg-deb --fsys-tarfile "$deb"/prometheus_*.deb | tar -xO ./usr/bin/promtool >.venv/bin/promtool
      chmod 755 .venv/bin/promtool
      rm -rf "$deb"
    fi
    ;;
esac
say "ready: $(.venv/bin/ipsecd --version) in $(pwd)/.venv"
