#!/usr/bin/env bash
# Install ipsecd as a service on Debian 12 (or later), from this source tree.  Run as root:
#
#   sudo scripts/install.sh
#
# One command, safe to run again (an upgrade is the same command from a newer tree):
#   - apt packages needed at run time (Debian's python3 + python3-venv; gcc and python3-dev
#     because python-pytun is only published as source; iproute2, iputils-ping and procps for
#     `ipsecd demo`)
#   - a virtualenv in /opt/ipsecd made with Debian's /usr/bin/python3 (Debian's python is
#     "externally managed", PEP 668: pip refuses to install into it), ipsecd installed into it
#   - /usr/local/sbin/ipsecd and /usr/local/sbin/ipsecctl linked to the venv's commands
#   - the unit files in /usr/local/lib/systemd/system (ExecStart=/usr/local/sbin/ipsecd);
#     systemctl daemon-reload when systemd runs.  The service is NOT enabled: there is no
#     config yet (see the lines printed at the end)
#   - the system account ipsecd the units run as (User=ipsecd, with CAP_NET_ADMIN and
#     CAP_NET_BIND_SERVICE only)
#   - /etc/ipsecd (0755) and /etc/ipsecd/secrets (0750 root:ipsecd; the key files in it are
#     owned by ipsecd, mode 0600); what is in them is never touched
#   - man pages ipsecd(8), ipsecctl(8), ipsecd.yaml(5) and bash completion, generated from the
#     installed code, and the example configs in /usr/local/share/doc/ipsecd/examples
#
# Environment (for tests and packagers; an admin needs none of it):
#   IPSECD_PREFIX=/opt/ipsecd       where the venv goes
#   IPSECD_NO_APT=1                 skip apt-get (the packages are already there)
#   IPSECD_PIP_CONSTRAINTS=FILE     pip constraints (CI installs the lowest supported versions)
#   IPSECD_PYTHON=/usr/bin/python3  the interpreter the venv is made from
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${IPSECD_PREFIX:-/opt/ipsecd}
PYTHON=${IPSECD_PYTHON:-/usr/bin/python3}
SBIN=/usr/local/sbin
UNITDIR=/usr/local/lib/systemd/system
SHARE=/usr/local/share
ETC=/etc/ipsecd

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }
truthy() { case "${1:-}" in 1|yes|true|on) return 0 ;; *) return 1 ;; esac; }

[ "$(id -u)" = 0 ] || die "run as root (sudo scripts/install.sh)"
[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/ipsecd" ] || die "$SRC is not an ipsecd source tree"

# -- 1. system packages --------------------------------------------------------------------------
if ! truthy "${IPSECD_NO_APT:-}"; then
  say "apt: installing the run-time packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
    iproute2 iputils-ping procps >/dev/null
fi
[ -x "$PYTHON" ] || die "$PYTHON not found (apt-get install python3 python3-venv)"

# -- 2. the virtualenv ---------------------------------------------------------------------------
# Made again when missing, broken, or made by another Python version (a Debian upgrade moves
# /usr/bin/python3 to a new minor version, and a venv is bound to the one that made it).
want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$PREFIX/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  [ -z "$have" ] || say "$PREFIX was made by Python $have, $PYTHON is $want: making it again"
  rm -rf "$PREFIX"
  "$PYTHON" -m venv "$PREFIX" || die "$PYTHON -m venv failed (apt-get install python3-venv)"
fi
pip=("$PREFIX/bin/python" -m pip --disable-pip-version-check -q)
constraints=()
if [ -n "${IPSECD_PIP_CONSTRAINTS:-}" ]; then
  constraints=(-c "$IPSECD_PIP_CONSTRAINTS")
  say "pip constraints: $IPSECD_PIP_CONSTRAINTS"
fi

# Build from a copy: pip would write build/ and *.egg-info into the checkout (which may belong
# to another user, or be a read-only synced folder).
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=.vagrant --exclude=vagrant/.psk \
  --exclude=build --exclude='*.egg-info' --exclude=__pycache__ --exclude=.ruff_cache \
  --exclude=.mypy_cache --exclude=.pytest_cache -cf - . | tar -C "$build" -xf -
say "pip: installing ipsecd into $PREFIX"
# pip always reinstalls a project given as a directory, so a second run installs the new code
# even when the version number did not change; dependencies already satisfied stay.
"${pip[@]}" install "${constraints[@]}" "$build"
version=$("$PREFIX/bin/ipsecd" --version)

# -- 3. commands in PATH -------------------------------------------------------------------------
# /usr/local/sbin: system administration commands (both need root) installed outside dpkg
# (FHS 4.9); it is in root's PATH and in sudo's secure_path on Debian.
install -d -m 0755 "$SBIN"
for cmd in ipsecd ipsecctl; do
  ln -sfn "$PREFIX/bin/$cmd" "$SBIN/$cmd"
done

# -- 4. systemd units ----------------------------------------------------------------------------
# /usr/local/lib/systemd/system is systemd's place for locally installed units; the admin's
# own changes go in /etc/systemd/system (systemctl edit ipsecd), which wins and which this
# script never touches.
install -d -m 0755 "$UNITDIR"
for unit in ipsecd.service ipsecd@.service; do
  install -m 0644 "$SRC/systemd/$unit" "$UNITDIR/$unit"
done
grep -q "^ExecStart=$SBIN/ipsecd " "$UNITDIR/ipsecd.service" \
  || die "systemd/ipsecd.service does not run $SBIN/ipsecd"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

# -- 5. the service account, config and secrets directories -------------------------------------
# The daemon runs as ipsecd, not root.  The config names secret files (psk_file, key_file)
# that ipsecd refuses unless mode 0600; they go in secrets/, which only root and the ipsecd
# group may enter, and belong to ipsecd (it reads them again at reload).
if ! getent passwd ipsecd >/dev/null; then
  useradd --system --user-group --home-dir /nonexistent --no-create-home \
    --shell /usr/sbin/nologin --comment "ipsecd IPsec gateway" ipsecd
  say "created the system account ipsecd"
fi
install -d -m 0755 "$ETC"
install -d -m 0750 -o root -g ipsecd "$ETC/secrets"
chmod 0755 "$ETC"
chown root:ipsecd "$ETC/secrets"
chmod 0750 "$ETC/secrets"

# -- 6. man pages, completion, examples ----------------------------------------------------------
"$PREFIX/bin/python" -m ipsecd.cli.manpages --output "$SHARE/man" >/dev/null
install -d -m 0755 "$SHARE/bash-completion/completions"
"$PREFIX/bin/python" -m ipsecd.cli.completion >"$SHARE/bash-completion/completions/ipsecd"
ln -sfn ipsecd "$SHARE/bash-completion/completions/ipsecctl"
install -d -m 0755 "$SHARE/doc/ipsecd/examples"
install -m 0644 "$SRC"/etc/*.yaml "$SHARE/doc/ipsecd/examples/"
install -m 0644 "$SRC/LICENSE" "$SHARE/doc/ipsecd/LICENSE"
if command -v mandb >/dev/null 2>&1; then
  mandb -q 2>/dev/null || true
fi

say "installed $version: $SBIN/ipsecd, $SBIN/ipsecctl -> $PREFIX"
if [ ! -e "$ETC/ipsecd.yaml" ]; then
  cat <<EOF
Next:
  cp $SHARE/doc/ipsecd/examples/site-a.psk.yaml $ETC/ipsecd.yaml
  (umask 077; printf '0s%s\\n' "\$(head -c 32 /dev/urandom | base64 -w0)" >$ETC/secrets/site-a-b.psk)
  chown ipsecd: $ETC/secrets/site-a-b.psk     # the same key goes to the peer
  editor $ETC/ipsecd.yaml        # addresses, peers, psk_file: $ETC/secrets/site-a-b.psk
  ipsecd check $ETC/ipsecd.yaml
  echo net.ipv4.ip_forward=1 >/etc/sysctl.d/60-ipsecd.conf && sysctl -p /etc/sysctl.d/60-ipsecd.conf
  systemctl enable --now ipsecd
Open UDP 500 and 4500 towards the peer.  See ipsecd.yaml(5), ipsecd(8) and docs/install.md.
EOF
elif [ -d /run/systemd/system ] && systemctl is-active -q ipsecd; then
  say "ipsecd.service is running the old code: systemctl restart ipsecd"
fi
