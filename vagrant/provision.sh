#!/usr/bin/env bash
# Provision one ipsecd gateway: install ipsecd, write its config and its PSK or certificate,
# start the service.
#
#   vagrant/provision.sh [options] --wan ADDR --peer-wan ADDR --site-addr ADDR ROLE
#
# ROLE is left or right.  Vagrant runs it as root in each VM with the addresses from the
# Vagrantfile.  The tests run the same script with a temporary root and without systemd, then
# start the daemon themselves in a namespace:
#
#   IPSECD_NO_INSTALL=1 IPSECD_NO_SYSTEMD=1 IPSECD_PSK_SOURCE=/tmp/t/shared.psk \
#       vagrant/provision.sh --root /tmp/t/left --wan 192.0.2.1 --peer-wan 192.0.2.2 \
#       --site-addr 10.1.0.1 left
#   ipsecd run --config /tmp/t/left/etc/ipsecd/ipsecd.yaml
#
# Options (each also an environment variable):
#   --wan ADDR          IPSECD_WAN         this gateway's address on the shared "internet"
#   --peer-wan ADDR     IPSECD_PEER_WAN    the other gateway's address there
#   --site-addr ADDR    IPSECD_SITE_ADDR   this gateway's address on its site network
#   --root DIR          IPSECD_ROOT        prefix for every path written (default /)
#   --etc DIR           IPSECD_ETC         config directory (default ROOT/etc/ipsecd)
#   --run DIR           IPSECD_RUN         directory of the control socket (default ROOT/run/ipsecd,
#                                          the unit's RuntimeDirectory)
#   --auth psk|cert     IPSECD_AUTH        how the gateways authenticate (default psk)
#   --psk-source FILE   IPSECD_PSK_SOURCE  psk: the PSK both gateways share; created if missing
#                                          (default vagrant/.psk in the source tree, gitignored)
#   --ca-dir DIR        IPSECD_CA_DIR      cert: the CA both gateways trust (ca.pem, ca.key);
#                                          made by vagrant/make-ca.sh if missing (default
#                                          vagrant/pki in the source tree, gitignored)
#   --no-install        IPSECD_NO_INSTALL=1  skip scripts/install.sh (ipsecd already importable)
#   --no-systemd        IPSECD_NO_SYSTEMD=1  skip sysctl and systemctl
#   IPSECD_SRC  the ipsecd source tree (default: the parent of this script's directory)
#
# With --auth cert the gateway gets its own key (ETC/private/ROLE.key, mode 0600, kept on a
# re-provision) and a certificate from the CA with `ipsecd pki issue` (subjectAltName: its
# --wan address, so the default identities fit), and trusts ETC/cacerts/ca.pem.
#
# On success it prints the paths it wrote, one "name: path" per line.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}
die() { echo "provision.sh: $*" >&2; exit 1; }
say() { echo "provision.sh: $*" >&2; }
truthy() { case "${1:-}" in 1|yes|true|on) return 0 ;; *) return 1 ;; esac; }

SRC=${IPSECD_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
ROOT=${IPSECD_ROOT:-/}
ETC=${IPSECD_ETC:-}
RUN=${IPSECD_RUN:-}
PSK_SOURCE=${IPSECD_PSK_SOURCE:-}
AUTH=${IPSECD_AUTH:-psk}
CA_DIR=${IPSECD_CA_DIR:-}
NO_INSTALL=${IPSECD_NO_INSTALL:-0}
NO_SYSTEMD=${IPSECD_NO_SYSTEMD:-0}
WAN=${IPSECD_WAN:-}
PEER_WAN=${IPSECD_PEER_WAN:-}
SITE_ADDR=${IPSECD_SITE_ADDR:-}
ROLE=

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --etc) ETC=${2:?--etc needs a directory}; shift 2 ;;
    --etc=*) ETC=${1#*=}; shift ;;
    --run) RUN=${2:?--run needs a directory}; shift 2 ;;
    --run=*) RUN=${1#*=}; shift ;;
    --psk-source) PSK_SOURCE=${2:?--psk-source needs a file}; shift 2 ;;
    --psk-source=*) PSK_SOURCE=${1#*=}; shift ;;
    --auth) AUTH=${2:?--auth needs psk or cert}; shift 2 ;;
    --auth=*) AUTH=${1#*=}; shift ;;
    --ca-dir) CA_DIR=${2:?--ca-dir needs a directory}; shift 2 ;;
    --ca-dir=*) CA_DIR=${1#*=}; shift ;;
    --wan) WAN=${2:?--wan needs an address}; shift 2 ;;
    --wan=*) WAN=${1#*=}; shift ;;
    --peer-wan) PEER_WAN=${2:?--peer-wan needs an address}; shift 2 ;;
    --peer-wan=*) PEER_WAN=${1#*=}; shift ;;
    --site-addr) SITE_ADDR=${2:?--site-addr needs an address}; shift 2 ;;
    --site-addr=*) SITE_ADDR=${1#*=}; shift ;;
    --no-install) NO_INSTALL=1; shift ;;
    --no-systemd) NO_SYSTEMD=1; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "provision.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$ROLE" ] || die "one ROLE only (got $ROLE and $1)"; ROLE=$1; shift ;;
  esac
done

[ -n "$ROLE" ] || usage
TEMPLATE="$SRC/vagrant/templates/$ROLE.yaml"
[ -f "$TEMPLATE" ] || die "no template for role '$ROLE' ($TEMPLATE); roles: $(
  cd "$SRC/vagrant/templates" && ls ./*.yaml | sed 's|^\./||; s|\.yaml$||' | tr '\n' ' ')"

for opt in wan:"$WAN" peer-wan:"$PEER_WAN" site-addr:"$SITE_ADDR"; do
  value=${opt#*:}
  [ -n "$value" ] || die "--${opt%%:*} ADDR missing (the Vagrantfile passes the addresses)"
  [[ $value =~ ^[0-9a-fA-F.:]+$ ]] || die "--${opt%%:*}: not an IP address: $value"
done
ROOT=${ROOT%/}
ETC=${ETC:-$ROOT/etc/ipsecd}
RUN=${RUN:-$ROOT/run/ipsecd}
PSK_SOURCE=${PSK_SOURCE:-$SRC/vagrant/.psk}
CA_DIR=${CA_DIR:-$SRC/vagrant/pki}
case "$AUTH" in psk|cert) ;; *) die "--auth: psk or cert, not '$AUTH'" ;; esac
case "$ETC$RUN" in *@*|*'|'*) die "paths may not contain '@' or '|': $ETC $RUN" ;; esac
[ "$(id -u)" = 0 ] || truthy "$NO_SYSTEMD" || die "run as root (or with IPSECD_NO_SYSTEMD=1)"

# -- 1. install ipsecd ---------------------------------------------------------------------------
# The service install an admin runs (scripts/install.sh: a venv in /opt/ipsecd, the commands in
# /usr/local/sbin, the unit files); nothing VM-specific.
if ! truthy "$NO_INSTALL"; then
  say "installing ipsecd from $SRC"
  bash "$SRC/scripts/install.sh"
  export PATH="/usr/local/sbin:$PATH"
fi

if command -v ipsecd >/dev/null 2>&1; then
  IPSECD=(ipsecd)
else  # a source checkout (the tests): run the module from the tree
  IPSECD=(env "PYTHONPATH=$SRC${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m ipsecd.cli.ipsecd)
fi

# -- 2. the credentials: the shared PSK, or a certificate from the shared CA ---------------------
# The config directory is readable (as scripts/install.sh makes it); keys are not: mode 0600,
# owned by the account the unit runs the daemon as (User=ipsecd).
owner() {  # chown to the daemon's account where the unit will run it
  if ! truthy "$NO_SYSTEMD" && getent passwd ipsecd >/dev/null; then chown ipsecd: "$@"; fi
}
mkdir -p "$ETC"
chmod 0755 "$ETC"
if [ "$AUTH" = psk ]; then
  # Generated once (the Vagrantfile already does it on the host, because an rsync'ed synced
  # folder does not carry files back from a VM), then copied into each gateway's private
  # file.  "0s" marks base64, so the key is the 32 random bytes (strongSwan's convention).
  umask 077
  if [ ! -s "$PSK_SOURCE" ]; then
    mkdir -p "$(dirname "$PSK_SOURCE")"
    tmp="$PSK_SOURCE.$$"
    printf '0s%s\n' "$(head -c 32 /dev/urandom | base64 -w0)" >"$tmp"
    # Whoever comes first wins; a concurrent second provision keeps the first key.
    mv -n "$tmp" "$PSK_SOURCE" 2>/dev/null || true
    rm -f "$tmp"
    say "generated a new PSK in $PSK_SOURCE"
  fi
  install -m 0600 "$PSK_SOURCE" "$ETC/psk.secret"
  owner "$ETC/psk.secret"
  AUTH_YAML="psk_file: $ETC/psk.secret"
else
  # The CA is made once for both gateways (on the host by the Vagrantfile, for the same reason
  # as the PSK); each gateway keeps its own key and gets a fresh certificate on each run.
  if [ ! -s "$CA_DIR/ca.pem" ] || [ ! -s "$CA_DIR/ca.key" ]; then
    IPSECD_SRC=$SRC bash "$SRC/vagrant/make-ca.sh" "$CA_DIR"
  fi
  case "$(stat -c %a "$CA_DIR/ca.key")" in
    600|400) ;;
    *) die "$CA_DIR/ca.key is mode $(stat -c %a "$CA_DIR/ca.key"); make it 0600 (chmod 600)" ;;
  esac
  umask 077
  mkdir -p "$ETC/private" "$ETC/certs" "$ETC/cacerts"
  chmod 0700 "$ETC/private"
  chmod 0755 "$ETC/certs" "$ETC/cacerts"
  install -m 0644 "$CA_DIR/ca.pem" "$ETC/cacerts/ca.pem"
  KEY=$ETC/private/$ROLE.key CERT=$ETC/certs/$ROLE.pem
  if [ -s "$KEY" ]; then key_opts=(--key "$KEY"); else key_opts=(--key-out "$KEY"); fi
  "${IPSECD[@]}" pki issue --ca-cert "$CA_DIR/ca.pem" --ca-key "$CA_DIR/ca.key" \
    --dn "O=ipsecd vagrant, CN=$ROLE" --san "$WAN" "${key_opts[@]}" --cert-out "$CERT" \
    --force >&2
  chmod 0600 "$KEY"
  owner "$ETC/private" "$KEY"
  AUTH_YAML="certificate: $CERT\n      private_key: $KEY\n      cacerts: [$ETC/cacerts/ca.pem]"
fi

# -- 3. the config -------------------------------------------------------------------------------
umask 022
mkdir -p "$RUN"
chmod 0700 "$RUN"
sed -e "s|@ETC_DIR@|$ETC|g" -e "s|@RUN_DIR@|$RUN|g" -e "s|@WAN_ADDR@|$WAN|g" \
  -e "s|@PEER_WAN_ADDR@|$PEER_WAN|g" -e "s|@SITE_ADDR@|$SITE_ADDR|g" -e "s|@AUTH@|$AUTH_YAML|" \
  "$TEMPLATE" >"$ETC/ipsecd.yaml.new"
if grep -n '@[A-Z_]*@' "$ETC/ipsecd.yaml.new" >&2; then
  die "unfilled placeholder in $TEMPLATE (above)"
fi
chmod 0644 "$ETC/ipsecd.yaml.new"
if ! "${IPSECD[@]}" check "$ETC/ipsecd.yaml.new" >&2; then
  rm -f "$ETC/ipsecd.yaml.new"
  die "the config from $TEMPLATE does not validate; $ETC/ipsecd.yaml left as it was"
fi
mv -f "$ETC/ipsecd.yaml.new" "$ETC/ipsecd.yaml"

# -- 4. systemd ----------------------------------------------------------------------------------
if truthy "$NO_SYSTEMD"; then
  say "IPSECD_NO_SYSTEMD set: not installing the unit; start it with:" \
    "${IPSECD[*]} run --config $ETC/ipsecd.yaml"
else
  # The unit itself came with scripts/install.sh (/usr/local/lib/systemd/system).
  mkdir -p "$ROOT/etc/sysctl.d"
  # Forward between the site network and the tunnel (a gateway, not just a host).
  printf 'net.ipv4.ip_forward = 1\n' >"$ROOT/etc/sysctl.d/60-ipsecd.conf"
  if [ "$ROOT" = "" ]; then
    sysctl -q -p /etc/sysctl.d/60-ipsecd.conf
    systemctl daemon-reload
    systemctl enable --now ipsecd
    # enable --now leaves a running daemon alone: restart it so a re-provision applies.
    systemctl restart ipsecd
    say "ipsecd is $(systemctl is-active ipsecd)"
  else
    say "--root $ROOT: sysctl file written there, systemctl not run"
  fi
fi

echo "config: $ETC/ipsecd.yaml"
if [ "$AUTH" = psk ]; then
  echo "psk: $ETC/psk.secret"
else
  echo "certificate: $CERT"
  echo "private_key: $KEY"
  echo "cacert: $ETC/cacerts/ca.pem"
fi
echo "control_socket: $RUN/ipsecd.sock"
