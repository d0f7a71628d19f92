"""strongSwan (charon + swanctl) as a peer inside a :class:`Topology` namespace.

Used by the namespace tests (strongSwan as the interop peer) and by ``bench/`` (the
strongSwan ↔ strongSwan baseline).

How charon is run here (see shared/notes/strongswan-in-namespaces.md):

* ``ip netns exec NS unshare -m sh -c 'mount -t tmpfs none /run && exec charon'`` — each
  charon gets a private ``/run`` (pid file, default sockets), so several run side by side.
* ``STRONGSWAN_CONF`` points to a strongswan.conf generated in a per-instance directory:
  an explicit plugin list (nothing from /etc is loaded), **kernel-libipsec** (the kernel has
  no XFRM: userspace ESP over the TUN device ``ipsec0``, always UDP/4500), no bypass-lan
  and no forecast, the vici socket in that directory, a file log with ``ike``/``knl``/``cfg``
  at level 2 and millisecond time stamps, and short retransmission settings.
* swanctl runs in the root namespace and reaches charon over the vici unix socket
  (``--uri`` must come after the command).

Two strongSwan installations (:class:`StrongSwan`) run that way: the machine's own
(:data:`HOST`, Debian 12's 5.9.8) and strongSwan 6.1 in a Debian root built by
:mod:`tests.lab.strongswan6` (shared/notes/strongswan-6-chroot.md).  For the latter every
charon and every swanctl runs in a private mount namespace of its own
(``unshare -m``) with ``/dev`` (``/dev/net/tun`` for kernel-libipsec), ``/proc`` and the
instance directory as ``/run`` bound into the root, then ``chroot``: strongswan.conf,
swanctl.conf, the log, the pid file and the vici socket are ``/run/…`` inside and the
instance directory outside, and the mounts end with the process whatever way it ends
(nothing is mounted in the test's own namespace, so nothing is left to unmount).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from tests.lab.topology import SITE_A, SITE_B, Topology, kill_process_group, process_cpu_seconds
from tests.lab.vici import ViciClient, ViciError
from tests.lab.wait import WaitTimeout, wait_until

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "/usr/sbin/swanctl"
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

#: Plugins a PSK site-to-site charon needs here; those not installed are left out.
PLUGINS = (
    *("random", "nonce", "drbg", "openssl", "aes", "sha1", "sha2", "hmac", "gcm", "chapoly"),
    *("curve25519", "kdf", "pem", "pkcs1", "pubkey", "x509", "kernel-libipsec"),
    *("kernel-netlink", "socket-default", "vici"),
)

DEFAULT_IKE_PROPOSALS = "aes256gcm16-prfsha256-x25519"
DEFAULT_ESP_PROPOSALS = "aes128gcm16"
DEFAULT_PSK = "ipsecd-test-psk-0123456789abcdef"

StartAction = Literal["none", "start", "trap"]


class StrongSwanError(RuntimeError):
    """charon or swanctl failed; the message includes the relevant output / log tail."""


@dataclasses.dataclass(frozen=True)
class StrongSwan:
    """One strongSwan installation a :class:`Charon` runs: the machine's own (``root`` None)
    or one in a Debian root that each charon and swanctl runs in with ``chroot``.

    ``label`` names it in test ids and messages ("5.9.8", "6.1").
    """

    label: str
    root: Path | None = None

    def __str__(self) -> str:
        return f"strongSwan {self.label}"

    @property
    def plugin_dir(self) -> Path:
        """Where its plugins are, seen from the test."""
        return self.root / PLUGIN_DIR.relative_to("/") if self.root else PLUGIN_DIR

    @functools.cached_property
    def version(self) -> str:
        """What ``charon --version`` says ("5.9.8", "6.1.0")."""
        argv = ["chroot", str(self.root), CHARON] if self.root else [CHARON]
        out = subprocess.run(
            [*argv, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        found = re.search(r"strongSwan (\S+)", out.stdout)
        if not found:
            raise StrongSwanError(f"{' '.join(argv)} --version: {out.stdout}{out.stderr}")
        return found.group(1)

    def charon_argv(self, rundir: Path) -> list[str]:
        """charon with a private ``/run`` (``rundir`` itself in a root, a tmpfs otherwise)."""
        if self.root is None:
            return ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none /run && exec {CHARON}"]
        root = shlex.quote(str(self.root))
        script = (
            f"mount --bind /dev {root}/dev && mount -t proc proc {root}/proc"
            f" && mount --bind {shlex.quote(str(rundir))} {root}/run"
            f" && exec chroot {root} {CHARON}"
        )
        return ["unshare", "-m", "sh", "-c", script]

    def swanctl_argv(self, rundir: Path, args: list[str]) -> list[str]:
        """swanctl with ``args``; in a root it sees ``rundir`` as ``/run``, as charon does."""
        if self.root is None:
            return ["swanctl", *args]
        root = shlex.quote(str(self.root))
        script = (
            f"mount --bind {shlex.quote(str(rundir))} {root}/run"
            f' && exec chroot {root} {SWANCTL} "$@"'
        )
        return ["unshare", "-m", "sh", "-c", script, "swanctl", *args]


#: Debian 12's own strongSwan (5.9.8).
HOST = StrongSwan("5.9.8")


@dataclasses.dataclass(frozen=True)
class SwanConnection:
    """One swanctl connection (IKE SA config) with one child (CHILD_SA config).

    Times are seconds (``None``: strongSwan's default); ``conn_extra`` / ``child_extra`` add
    raw swanctl.conf settings (``{"mobike": "no"}``) for what the fields do not cover.
    """

    local_addr: str
    remote_addr: str
    local_ts: str
    remote_ts: str
    local_id: str | None = None  # default: local_addr
    remote_id: str | None = None  # default: remote_addr
    psk: str = DEFAULT_PSK
    ike_proposals: str = DEFAULT_IKE_PROPOSALS
    esp_proposals: str = DEFAULT_ESP_PROPOSALS
    start_action: StartAction = "none"
    name: str = "gw"
    child: str = "net"
    encap: bool = True
    mobike: bool = False
    # IKE SA lifetimes (swanctl: rekey_time, over_time, reauth_time)
    ike_rekey_time: int | None = None
    ike_over_time: int | None = None
    # CHILD_SA lifetimes (swanctl: rekey_time, life_time, rand_time, rekey_bytes/packets)
    child_rekey_time: int | None = None
    child_life_time: int | None = None
    rand_time: int | None = None
    child_rekey_bytes: int | None = None
    child_rekey_packets: int | None = None
    # liveness (RFC 7296 §2.4)
    dpd_delay: int | None = None
    dpd_action: Literal["clear", "trap", "restart"] | None = None
    close_action: Literal["none", "trap", "start"] | None = None
    keyingtries: int = 1
    conn_extra: dict[str, str] = dataclasses.field(default_factory=dict)
    child_extra: dict[str, str] = dataclasses.field(default_factory=dict)
    # More children of the connection: (name, local_ts, remote_ts), with the first one's
    # other settings.
    more_children: tuple[tuple[str, str, str], ...] = ()

    def swanctl_conf(self) -> str:
        """The ``connections`` and ``secrets`` sections for this connection."""

        def opt(key: str, value: object | None) -> list[str]:
            if value is None:
                return []
            if isinstance(value, bool):
                value = "yes" if value else "no"
            return [f"{key} = {value}"]

        local_id = self.local_id or self.local_addr
        remote_id = self.remote_id or self.remote_addr
        conn = [
            "version = 2",
            f"local_addrs = {self.local_addr}",
            f"remote_addrs = {self.remote_addr}",
            f"proposals = {self.ike_proposals}",
            *opt("encap", self.encap),
            *opt("mobike", self.mobike),
            *opt("keyingtries", self.keyingtries),
            *opt("rekey_time", self.ike_rekey_time),
            *opt("over_time", self.ike_over_time),
            *opt("dpd_delay", self.dpd_delay),
            *(f"{k} = {v}" for k, v in self.conn_extra.items()),
        ]
        settings = [
            f"esp_proposals = {self.esp_proposals}",
            "mode = tunnel",
            f"start_action = {self.start_action}",
            *opt("rekey_time", self.child_rekey_time),
            *opt("life_time", self.child_life_time),
            *opt("rand_time", self.rand_time),
            *opt("rekey_bytes", self.child_rekey_bytes),
            *opt("rekey_packets", self.child_rekey_packets),
            *opt("dpd_action", self.dpd_action),
            *opt("close_action", self.close_action),
            *(f"{k} = {v}" for k, v in self.child_extra.items()),
        ]

        def block(lines: list[str], indent: str) -> str:
            return "".join(f"{indent}{line}\n" for line in lines)

        children = "".join(
            f"      {name} {{\n"
            + block([f"local_ts = {local}", f"remote_ts = {remote}", *settings], "        ")
            + "      }\n"
            for name, local, remote in (
                (self.child, self.local_ts, self.remote_ts),
                *self.more_children,
            )
        )

        return (
            "connections {\n"
            f"  {self.name} {{\n"
            f"{block(conn, '    ')}"
            f"    local {{\n      auth = psk\n      id = {local_id}\n    }}\n"
            f"    remote {{\n      auth = psk\n      id = {remote_id}\n    }}\n"
            "    children {\n"
            f"{children}"
            "    }\n"
            "  }\n"
            "}\n"
            "secrets {\n"
            f"  ike-{self.name} {{\n"
            f"    id-1 = {local_id}\n"
            f"    id-2 = {remote_id}\n"
            f'    secret = "{self.psk}"\n'
            "  }\n"
            "}\n"
        )


def site_to_site(topo: Topology, **kwargs: object) -> tuple[SwanConnection, SwanConnection]:
    """Matching connections for gwA (site A) and gwB (site B) of ``topo``.

    gwB's remote address is the one it sees for gwA (the NAT's outside address behind
    NAT); identities are the gateways' own addresses.  ``kwargs`` go to both sides.
    """

    def side(local: str, remote: str, remote_id: str, ts: tuple[str, str]) -> SwanConnection:
        return SwanConnection(
            local_addr=local,
            remote_addr=remote,
            local_id=local,
            remote_id=remote_id,
            local_ts=ts[0],
            remote_ts=ts[1],
            **kwargs,  # type: ignore[arg-type]
        )

    return (
        side(topo.gw_a_wan_ip, topo.gw_b_wan_ip, topo.gw_b_wan_ip, (SITE_A, SITE_B)),
        side(topo.gw_b_wan_ip, topo.gw_a_public_ip, topo.gw_a_wan_ip, (SITE_B, SITE_A)),
    )


def strongswan_conf(
    directory: Path,
    retransmit_tries: int = 3,
    retransmit_timeout: float = 1.0,
    socket: Path | None = None,
    fragment_size: int | None = None,
    plugin_dir: Path = PLUGIN_DIR,
    log_level: int | None = None,
    retransmit_base: float = 1.4,
    settings: Mapping[str, object] | None = None,
) -> str:
    """A self-contained strongswan.conf for a test charon whose files live in ``directory``
    (the vici socket at ``socket``, default ``directory/charon.vici``; both paths as charon
    sees them).  ``fragment_size`` is ``charon.fragment_size``: the largest IKE fragment as
    a whole IP datagram (RFC 7383).  Only plugins found in ``plugin_dir`` are loaded.

    ``log_level`` None logs what the tests read (``ike``, ``knl``, ``cfg``, ``chd`` at 2);
    a number puts every subsystem at that level (the benchmarks use 1: level 2 costs
    charon time per message).  ``settings`` adds ``charon.KEY = VALUE`` lines."""
    socket = socket or directory / "charon.vici"
    fragments = f"  fragment_size = {fragment_size}\n" if fragment_size is not None else ""
    fragments += "".join(f"  {key} = {value}\n" for key, value in (settings or {}).items())
    plugins = [p for p in PLUGINS if (plugin_dir / f"libstrongswan-{p}.so").exists()]
    if log_level is None:
        levels = {"default": 1, "ike": 2, "knl": 2, "cfg": 2, "net": 1, "esp": 1, "chd": 2}
    else:
        levels = {"default": log_level}
    log_lines = "".join(f"      {group} = {level}\n" for group, level in levels.items())
    return f"""\
charon {{
  load = {" ".join(plugins)}
  port = 500
  port_nat_t = 4500
  retransmit_tries = {retransmit_tries}
  retransmit_timeout = {retransmit_timeout}
  retransmit_base = {retransmit_base}
  install_virtual_ip = no
{fragments}  filelog {{
    charon {{
      path = {directory}/charon.log
      append = no
      flush_line = yes
      time_format = %s
      time_add_ms = yes
      ike_name = yes
{log_lines}    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
  plugins {{
    kernel-libipsec {{
      load = yes
    }}
    bypass-lan {{
      load = no
    }}
    forecast {{
      load = no
    }}
    vici {{
      socket = unix://{socket}
    }}
  }}
}}
swanctl {{
  load = pem pkcs1 x509 random openssl
}}
"""


# --- swanctl --list-sas --raw ----------------------------------------------------------

_SECTION = re.compile(r"\s*([\w.()-]+) \{")  # "(unnamed)": an IKE SA without config yet
_LIST = re.compile(r"\s*([\w.-]+)=\[([^\]]*)\]")
_VALUE = re.compile(r"\s*([\w.-]+)=(.*?)(?=\s+[\w.()-]+(?:=| \{)|\s*\})")
_CLOSE = re.compile(r"\s*\}")


def parse_vici_raw(text: str) -> list[dict[str, object]]:
    """Parse swanctl ``--raw`` output into one dict per message line.

    The format is ``msg-name {key=value key=[item item] section {…}}``; sections become
    dicts, lists become lists of strings, values strings (which may contain spaces, as in
    ``class=pre-shared key``).
    """
    messages: list[dict[str, object]] = []
    for line in text.splitlines():
        if "{" not in line:
            continue
        body = line[line.index("{") + 1 :]
        root: dict[str, object] = {}
        stack: list[dict[str, object]] = [root]
        pos = 0
        while pos < len(body) and len(stack) > 0:
            if m := _CLOSE.match(body, pos):
                stack.pop()
            elif m := _SECTION.match(body, pos):
                section: dict[str, object] = {}
                stack[-1][m.group(1)] = section
                stack.append(section)
            elif m := _LIST.match(body, pos):
                stack[-1][m.group(1)] = m.group(2).split()
            elif m := _VALUE.match(body, pos):
                stack[-1][m.group(1)] = m.group(2)
            else:
                raise ValueError(f"cannot parse swanctl raw output at {body[pos : pos + 40]!r}")
            pos = m.end()
        messages.append(root)
    return messages


# --- charon ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HandshakeTiming:
    """How long bringing up a CHILD_SA took, seen by swanctl and in charon's log."""

    wall_seconds: float  # initiate command sent to its answer (swanctl: includes its start-up)
    log_seconds: float | None  # charon log: "initiating IKE_SA" to "CHILD_SA ... established"


# "1796175503.571 16[IKE] <gw|2> retransmit 1 of request with message ID 0" (time_format %s)
_FIRST_RETRANSMIT = re.compile(
    r"^(\d+\.\d+) \S+ (?:<[^>]*> )?retransmit 1 of request with message ID (\d+)", re.M
)


class Charon:
    """One charon daemon of installation ``swan`` inside namespace ``ns`` of ``topo``; files
    in ``directory``.

    ``start()`` launches it and waits for vici; ``load(conn)`` writes swanctl.conf and loads
    it; ``initiate()``, ``terminate()``, ``list_sas()``, ``wait_for_child_sa()``, ``stop()``.
    Stopped automatically when the topology tears down (it is a spawned process); its log
    stays in ``directory`` (kept with the topology's work directory when a test fails).
    """

    def __init__(
        self,
        topo: Topology,
        ns: str,
        directory: Path | None = None,
        retransmit_tries: int = 3,
        retransmit_timeout: float = 1.0,
        fragment_size: int | None = None,
        swan: StrongSwan = HOST,
        log_level: int | None = None,
        retransmit_base: float = 1.4,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        self.topo, self.ns, self.swan = topo, ns, swan
        self.retransmit_timeout = retransmit_timeout
        self.dir = Path(directory or topo.log_path(f"charon-{ns.rsplit('-', 1)[-1]}"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.dir / "strongswan.conf"
        self.swanctl_path = self.dir / "swanctl.conf"
        self.log = self.dir / "charon.log"
        # Not in self.dir: a unix socket path must stay under 108 bytes.
        self.socket = topo.socket_path(f"{ns.rsplit('-', 1)[-1]}-{self.dir.name[:3]}.vici")
        # Where charon and swanctl see self.dir: as itself, or as /run inside a root (the
        # socket is then self.dir/charon.vici, and self.socket a short link to it).
        self._seen_dir = Path("/run") if swan.root else self.dir
        if swan.root:
            self.socket.unlink(missing_ok=True)
            self.socket.symlink_to(self.dir / "charon.vici")
            seen_socket = self._seen(self.dir / "charon.vici")
        else:
            seen_socket = self.socket
        self.uri = f"unix://{seen_socket}"  # for swanctl
        self.conf_path.write_text(
            strongswan_conf(
                self._seen_dir,
                retransmit_tries,
                retransmit_timeout,
                seen_socket,
                fragment_size,
                swan.plugin_dir,
                log_level,
                retransmit_base,
                settings,
            )
        )
        self.env = {**os.environ, "STRONGSWAN_CONF": str(self._seen(self.conf_path))}
        self.proc: subprocess.Popen[bytes] | None = None
        self.connections: list[SwanConnection] = []

    def _seen(self, path: Path) -> Path:
        """``path`` (in the instance directory) as charon and swanctl see it."""
        return self._seen_dir / path.relative_to(self.dir)

    @property
    def pid(self) -> int:
        """charon's pid (the spawned process execs into charon)."""
        if self.proc is None:
            raise StrongSwanError("charon not started")
        return self.proc.pid

    def charon_argv(self) -> list[str]:
        """How charon is run: by its installation (5.9.8 or the 6.1 root), with a private
        /run."""
        return self.swan.charon_argv(self.dir)

    def swanctl_argv(self, args: list[str]) -> list[str]:
        return self.swan.swanctl_argv(self.dir, args)

    def start(self, timeout: float = 15.0) -> Charon:
        """Start charon and wait until its vici socket answers."""
        self.proc = self.topo.spawn(
            self.ns, self.charon_argv(), self.dir / "charon.stdout", self.env
        )
        proc = self.proc
        try:
            wait_until(
                lambda: (
                    proc.poll() is not None
                    or (
                        self.socket.exists()
                        and self.swanctl("--stats", check=False).returncode == 0
                    )
                ),
                timeout,
                what=f"charon in {self.ns} to answer on {self.socket}",
            )
        except WaitTimeout as exc:
            raise StrongSwanError(f"{self.swan}: {exc}\n{self.tail()}") from None
        if proc.poll() is not None:
            raise StrongSwanError(
                f"{self.swan}: charon in {self.ns} exited {proc.returncode}\n{self.tail()}"
            )
        return self

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` of charon's log and stdout, for error messages."""
        out = []
        for path in (self.dir / "charon.stdout", self.log):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(out)

    def swanctl(
        self, command: str, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``swanctl COMMAND --uri … ARGS`` against this charon (from the root namespace)."""
        argv = self.swanctl_argv([command, "--uri", self.uri, *args])
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )
        if check and res.returncode != 0:
            raise StrongSwanError(
                f"{self.swan}: swanctl {command} {' '.join(args)} exited {res.returncode}\n"
                f"{res.stdout}\n{res.stderr}\n{self.tail()}"
            )
        return res

    def log_text(self) -> str:
        """charon's whole log so far ("" before it wrote one)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def first_retransmits(self, since: float = 0.0) -> list[tuple[float, int]]:
        """(when, message ID) of charon's first retransmission of each request it sent
        again after ``since`` (its log's epoch seconds): the original had then gone
        unanswered for ``retransmit_timeout`` in charon's eyes."""
        found = (
            (float(m.group(1)), int(m.group(2)))
            for m in _FIRST_RETRANSMIT.finditer(self.log_text())
        )
        return [(when, mid) for when, mid in found if when >= since]

    def load(self, *conns: SwanConnection) -> None:
        """Write swanctl.conf for ``conns`` and load it (connections and secrets)."""
        self.connections = list(conns)
        self.load_conf("".join(c.swanctl_conf() for c in conns))

    def load_conf(self, text: str, timeout: float = 30.0) -> None:
        """Write ``text`` as swanctl.conf and ``swanctl --load-all`` it (what :meth:`load`
        does with connections; the scale bench writes a thousand of its own)."""
        self.swanctl_path.write_text(text)
        self.swanctl("--load-all", "--file", str(self._seen(self.swanctl_path)), timeout=timeout)

    def _conn(self, name: str | None) -> SwanConnection:
        if not self.connections:
            raise StrongSwanError("no connection loaded")
        if name is None:
            return self.connections[0]
        return next(c for c in self.connections if c.name == name)

    def initiate(
        self,
        child: str | None = None,
        ike: str | None = None,
        timeout: float = 10.0,
        via: Literal["swanctl", "vici"] = "swanctl",
    ) -> HandshakeTiming:
        """Initiate and block until the CHILD_SA is up; raises on failure.

        ``via="swanctl"`` runs ``swanctl --initiate`` (its start-up counts in the wall
        time); ``via="vici"`` sends the same ``initiate`` command over the vici socket from
        this process (what the benchmark times).
        """
        conn = self._conn(ike)
        child = child or conn.child
        log_mark = self.log.stat().st_size if self.log.exists() else 0
        t0 = time.monotonic()
        if via == "vici":
            try:
                with ViciClient(self.socket, timeout=timeout + 5) as vici:
                    vici.command(
                        "initiate", child=child, ike=conn.name, timeout=int(timeout * 1000)
                    )
            except (OSError, ViciError) as exc:
                raise StrongSwanError(f"vici initiate in {self.ns}: {exc}\n{self.tail()}") from exc
        else:
            self.swanctl(
                "--initiate", "--child", child, "--ike", conn.name, "--timeout", str(int(timeout)),
                timeout=timeout + 5,
            )  # fmt: skip
        wall = time.monotonic() - t0
        return HandshakeTiming(wall, self.handshake_seconds_from_log(log_mark))

    def rekey_ike(self, ike: str | None = None) -> None:
        """vici ``rekey`` of the IKE SA (what ``swanctl --rekey --ike NAME`` sends); returns
        once charon has started it."""
        conn = self._conn(ike)
        try:
            with ViciClient(self.socket, timeout=10) as vici:
                vici.command("rekey", ike=conn.name)
        except (OSError, ViciError) as exc:
            raise StrongSwanError(f"vici rekey in {self.ns}: {exc}\n{self.tail()}") from exc

    def handshake_seconds_from_log(self, offset: int = 0) -> float | None:
        """From the log after byte ``offset``: first "initiating IKE_SA" to first CHILD_SA
        "established" (None if either is missing)."""
        if not self.log.exists():
            return None
        with self.log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        start = end = None
        for line in text.splitlines():
            m = re.match(r"(\d+\.\d+)\s", line)
            if not m:
                continue
            if start is None and "initiating IKE_SA" in line:
                start = float(m.group(1))
            elif start is not None and re.search(r"CHILD_SA \S+ established", line):
                end = float(m.group(1))
                break
        return end - start if start is not None and end is not None else None

    def terminate(self, ike: str | None = None, timeout: float = 10.0) -> None:
        """``swanctl --terminate --ike NAME`` (deletes the IKE SA and its children)."""
        conn = self._conn(ike)
        self.swanctl(
            "--terminate", "--ike", conn.name, "--timeout", str(int(timeout)), timeout=timeout + 5
        )

    def list_sas(self) -> list[dict[str, object]]:
        """IKE SAs as dicts from ``swanctl --list-sas --raw``: ``{"name": …, "state": …,
        "child-sas": {…}, …}`` (one per IKE SA)."""
        out = self.swanctl("--list-sas", "--raw").stdout
        sas: list[dict[str, object]] = []
        for msg in parse_vici_raw(out):
            for name, sa in msg.items():
                if isinstance(sa, dict):
                    sas.append({"name": name, **sa})
        return sas

    def child_sas(self, state: str | None = "INSTALLED") -> list[dict[str, object]]:
        """All CHILD_SAs (of all IKE SAs), filtered by ``state`` unless None."""
        children: list[dict[str, object]] = []
        for sa in self.list_sas():
            kids = sa.get("child-sas")
            if isinstance(kids, dict):
                for kid in kids.values():
                    if isinstance(kid, dict) and (state is None or kid.get("state") == state):
                        children.append(kid)
        return children

    def wait_for_child_sa(
        self, timeout: float = 10.0, child: str | None = None
    ) -> dict[str, object]:
        """Poll until a CHILD_SA (named ``child`` if given) is INSTALLED; return it."""
        try:
            installed = wait_until(
                lambda: [k for k in self.child_sas() if child is None or k.get("name") == child],
                timeout,
                what=f"a CHILD_SA {child or '(any)'} installed in charon in {self.ns}",
            )
        except WaitTimeout as exc:
            raise StrongSwanError(f"{exc}\n{self.tail()}") from None
        return installed[0]

    def cpu_seconds(self) -> float:
        """charon's CPU time so far (user + system, all threads)."""
        return process_cpu_seconds(self.pid)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM charon (it sends Deletes), SIGKILL after ``grace`` seconds."""
        if self.proc is not None:
            kill_process_group(self.proc, grace)


def start_pair(
    topo: Topology, swan: StrongSwan = HOST, log_level: int | None = None, **conn_kwargs: object
) -> tuple[Charon, Charon]:
    """charon on gwA and on gwB with matching site-to-site connections loaded (not up);
    ``log_level``: see :func:`strongswan_conf` (None: the tests' levels)."""
    conn_a, conn_b = site_to_site(topo, **conn_kwargs)
    a = Charon(topo, topo.gw_a, swan=swan, log_level=log_level).start()
    b = Charon(topo, topo.gw_b, swan=swan, log_level=log_level).start()
    a.load(conn_a)
    b.load(conn_b)
    return a, b


# --- IKE_SA_INIT capture ---------------------------------------------------------------


def capture_ike_sa_init_exchange(
    topo: Topology,
    ike_proposals: str = DEFAULT_IKE_PROPOSALS,
    esp_proposals: str = DEFAULT_ESP_PROPOSALS,
    out_dir: Path | None = None,
    swan: StrongSwan = HOST,
) -> tuple[bytes, bytes]:
    """Run charon ↔ charon (both ``swan``) on ``topo``; capture the IKE_SA_INIT request and
    response.

    Returns the raw UDP/500 payloads (IKE header first).  If ``out_dir`` is given they are
    also written there as ``ike_sa_init_request.bin`` / ``ike_sa_init_response.bin``, next
    to the pcap.  Both charons are stopped afterwards.
    """
    a, b = start_pair(topo, swan, ike_proposals=ike_proposals, esp_proposals=esp_proposals)
    try:
        pcap = (out_dir / "ike_sa_init.pcap") if out_dir else None
        with topo.start_capture(topo.gw_b, topo.WAN_IFACE, "udp port 500", pcap) as cap:
            a.initiate()
        packets = cap.packets()
    finally:
        a.stop()
        b.stop()
    requests = [p.payload for p in packets if p.proto == 17 and p.dport == 500]
    responses = [p.payload for p in packets if p.proto == 17 and p.sport == 500]
    init_req = [m for m in requests if len(m) >= 28 and m[18] == 34 and m[19] & 0x08]
    init_resp = [m for m in responses if len(m) >= 28 and m[18] == 34 and m[19] & 0x20]
    if not init_req or not init_resp:
        raise StrongSwanError(f"no IKE_SA_INIT captured ({len(packets)} packets on udp/500)")
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "ike_sa_init_request.bin").write_bytes(init_req[0])
        (out_dir / "ike_sa_init_response.bin").write_bytes(init_resp[0])
    return init_req[0], init_resp[0]


def capture_ike_sa_init(
    topo: Topology,
    ike_proposals: str = DEFAULT_IKE_PROPOSALS,
    out_dir: Path | None = None,
    swan: StrongSwan = HOST,
) -> bytes:
    """charon's IKE_SA_INIT request (initiator gwA → gwB) as raw bytes, IKE header first.

    ``topo`` must be a fresh plain (no NAT) topology with no daemon on the gateways.
    """
    request, _ = capture_ike_sa_init_exchange(
        topo, ike_proposals=ike_proposals, out_dir=out_dir, swan=swan
    )
    return request
