#!/usr/bin/env bash
# Make the CA of the Vagrant gateways once, with `ipsecd pki ca`: DIR/ca.key (mode 0600) and
# DIR/ca.pem, DIR itself mode 0700.  An existing CA is kept.
#
#   vagrant/make-ca.sh [DIR]        # default: vagrant/pki in the source tree (gitignored)
#
# The Vagrantfile runs it on the host under IPSECD_AUTH=cert (the rsync'ed synced folder
# carries nothing back from a VM, so a CA made inside one VM would never reach the other);
# vagrant/provision.sh runs it when the CA is missing (the namespace stand-in of the tests,
# where both gateways share DIR).  Each gateway then issues its own certificate from it.
#
# `ipsecd pki` needs Python 3.11 and cryptography >= 42: the first of `ipsecd` on PATH,
# the source tree's .venv (scripts/setup-dev.sh), $PYTHON or python3 that can run it.
set -euo pipefail

SRC=${IPSECD_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
DIR=${1:-$SRC/vagrant/pki}
DN=${IPSECD_CA_DN:-O=ipsecd vagrant, CN=ipsecd vagrant CA}
say() { echo "make-ca.sh: $*" >&2; }

if command -v ipsecd >/dev/null 2>&1; then
  IPSECD=(ipsecd)
else  # a source checkout: the module from the tree, with a Python whose cryptography fits
  py=
  for cand in "${PYTHON:-}" "$SRC/.venv/bin/python" python3; do
    [ -n "$cand" ] || continue
    if PYTHONPATH=$SRC "$cand" -c 'import ipsecd.cli.pki' 2>/dev/null; then py=$cand; break; fi
  done
  if [ -z "$py" ]; then
    say "no Python here can run 'ipsecd pki' (it needs Python 3.11 and cryptography >= 42;" \
      "Debian 12's python3-cryptography is 38)."
    say "Run scripts/setup-dev.sh (it makes $SRC/.venv), or set PYTHON=..., or make the CA" \
      "with any ipsecd: ipsecd pki ca --dn \"$DN\" --key-out $DIR/ca.key --cert-out $DIR/ca.pem"
    exit 1
  fi
  IPSECD=(env "PYTHONPATH=$SRC${PYTHONPATH:+:$PYTHONPATH}" "$py" -m ipsecd.cli.ipsecd)
fi

umask 077
mkdir -p "$DIR"
chmod 0700 "$DIR"
# One CA even when two provisionings start at once (the stand-in runs them side by side).
exec 9>"$DIR/.lock"
flock 9
if [ -s "$DIR/ca.pem" ] && [ -s "$DIR/ca.key" ]; then
  say "keeping the CA in $DIR"
  exit 0
fi
rm -f "$DIR/ca.pem" "$DIR/ca.key"  # half of one (an interrupted run): start again
"${IPSECD[@]}" pki ca --dn "$DN" --key-out "$DIR/ca.key" --cert-out "$DIR/ca.pem" >&2
