#!/usr/bin/env bash
# Set up a Debian 12 machine for ipsecd: system packages, then ipsecd itself (editable, with test
# extras). Run as root from the repository root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "setup-debian.sh: run as root (sudo)" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  iproute2 iputils-ping iperf3 nftables tcpdump procps kmod \
  strongswan-charon strongswan-swanctl libcharon-extra-plugins \
  libstrongswan-standard-plugins libstrongswan-extra-plugins \
  systemd >/dev/null
python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e '.[test]'
echo "ipsecd installed: $(command -v ipsecd)"
