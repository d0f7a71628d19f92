"""strongSwan with certificates, PPK and ML-KEM for the interop tests of issue 16.

What :mod:`tests.lab.strongswan` does not cover yet, in one place:

* :class:`Installation` — which strongSwan runs: Debian 12's own 5.9.8, or 6.1 (ML-KEM,
  IKE_INTERMEDIATE) in a Debian root entered with ``chroot`` (shared/notes/
  strongswan-6-chroot.md): each charon and swanctl in a private mount namespace with
  ``/dev``, ``/proc`` and the instance directory as ``/run`` bound into the root;
* :class:`SwanCharon` — a :class:`~tests.lab.strongswan.Charon` of an installation,
  with the plugins certificates need (x509, pkcs8, revocation, constraints, ...),
  ``rsa_pss``, and a credential directory beside its swanctl.conf (``x509/``,
  ``x509ca/``, ``x509crl/``, ``private/``: swanctl reads them relative to the file);
* :class:`CertConnection` — a connection whose sides authenticate by ``pubkey`` or
  ``psk``, with ``cacerts``, ``ppk_id``/``ppk_required`` and the PPK secret;
* :func:`strongswan_pki` — certificates made by strongSwan's own ``pki`` tool.

Interim: branch ``sw61`` adds ``tests/lab/strongswan6.py`` (a 6.1 root built and
cached by CI) and a ``StrongSwan`` installation class in ``strongswan.py`` (``Charon(...,
swan=...)``) with the same ``charon_argv``/``swanctl_argv`` shape as
:class:`Installation`; here :class:`~tests.lab.strongswan.Charon` only got the two hooks
``charon_argv()``/``swanctl_argv()`` that :class:`SwanCharon` overrides.  Once both are on
main, :class:`Installation` and :func:`sw61_root` give way to theirs (and to
``strongswan6_root()``, which builds the root under CI) and :class:`SwanCharon` keeps only
the credentials and plugin parts.  Until then the 6.1 root is found where the sw61 cache
or the certs chroot put it (:func:`sw61_root`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.lab.strongswan import (
    CHARON,
    PLUGIN_DIR,
    PLUGINS,
    Charon,
    StrongSwanError,
    SwanConnection,
    strongswan_conf,
)
from tests.lab.topology import Topology

SWANCTL = "/usr/sbin/swanctl"
#: Where a strongSwan 6.1 root may be found, in order; IPSECD_SW61_ROOT overrides.
SW61_ROOTS = (
    Path("/var/cache/ipsecd-test/strongswan-6.1"),  # branch sw61's cache (tests/lab/debian.py)
    Path("/var/tmp/certs-sw61"),  # the chroot the certificate work used
)
#: Plugins for certificates, CRLs, RSA-PSS and Ed25519 on top of the PSK set.
CERT_PLUGINS = ("pkcs8", "constraints", "revocation", "mgf1")


@dataclasses.dataclass(frozen=True)
class Installation:
    """One strongSwan installation: the machine's own (``root`` None) or one in a root."""

    label: str
    root: Path | None = None

    def __str__(self) -> str:
        return f"strongSwan {self.label}"

    @property
    def plugin_dir(self) -> Path:
        return self.root / PLUGIN_DIR.relative_to("/") if self.root else PLUGIN_DIR

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


HOST = Installation("5.9.8")


def sw61_root() -> Path | None:
    """A strongSwan 6.1 root on this machine, or None."""
    override = os.environ.get("IPSECD_SW61_ROOT")
    for root in [Path(override)] if override else SW61_ROOTS:
        charon = root / CHARON.lstrip("/")
        if charon.exists() and (root / "usr/sbin/swanctl").exists():
            return root
    return None


class SwanCharon(Charon):
    """A charon of ``swan`` with certificate plugins and a credential directory."""

    def __init__(
        self,
        topo: Topology,
        ns: str,
        swan: Installation = HOST,
        *,
        directory: Path | None = None,
        retransmit_tries: int = 3,
        retransmit_timeout: float = 1.0,
        fragment_size: int | None = None,
        rsa_pss: bool = False,
    ) -> None:
        super().__init__(topo, ns, directory, retransmit_tries, retransmit_timeout, fragment_size)
        self.swan = swan
        # Paths as charon and swanctl see them: as they are, or under /run in a root.
        self._seen_dir = Path("/run") if swan.root else self.dir
        if swan.root:
            self.socket.unlink(missing_ok=True)
            self.socket.symlink_to(self.dir / "charon.vici")
            seen_socket = self._seen(self.dir / "charon.vici")
        else:
            seen_socket = self.socket
        self.uri = f"unix://{seen_socket}"
        conf = strongswan_conf(
            self._seen_dir, retransmit_tries, retransmit_timeout, seen_socket, fragment_size
        )
        wanted = [*PLUGINS, *CERT_PLUGINS]
        plugins = [p for p in wanted if (swan.plugin_dir / f"libstrongswan-{p}.so").exists()]
        conf = re.sub(r"(?m)^  load = .*$", "  load = " + " ".join(plugins), conf, count=1)
        conf = conf.replace(
            "swanctl {\n  load = pem pkcs1 x509 random openssl\n}",
            "swanctl {\n  load = pem pkcs1 pkcs8 x509 random openssl\n}",
        )
        if rsa_pss:
            conf = conf.replace("charon {\n", "charon {\n  rsa_pss = yes\n", 1)
        self.conf_path.write_text(conf)
        self.env = {**os.environ, "STRONGSWAN_CONF": str(self._seen(self.conf_path))}
        for sub in ("x509", "x509ca", "x509crl", "private"):
            (self.dir / sub).mkdir(exist_ok=True)

    def _seen(self, path: Path) -> Path:
        return self._seen_dir / path.relative_to(self.dir)

    # ---- credentials (swanctl loads them from beside swanctl.conf) ----------------------

    def add_certificate(self, pem: bytes, name: str = "own.pem") -> str:
        (self.dir / "x509" / name).write_bytes(pem)
        return name

    def add_private_key(self, pem: bytes, name: str = "own.key") -> None:
        path = self.dir / "private" / name
        path.write_bytes(pem)
        path.chmod(0o600)

    def add_ca(self, pem: bytes, name: str = "ca.pem") -> str:
        (self.dir / "x509ca" / name).write_bytes(pem)
        return name

    def add_crl(self, data: bytes, name: str = "ca.crl") -> None:
        (self.dir / "x509crl" / name).write_bytes(data)

    # ---- running: charon and swanctl of this installation ------------------------------

    def charon_argv(self) -> list[str]:
        return self.swan.charon_argv(self.dir)

    def swanctl_argv(self, args: list[str]) -> list[str]:
        return self.swan.swanctl_argv(self.dir, args)

    def load(self, *conns: SwanConnection) -> None:
        self.connections = list(conns)
        self.swanctl_path.write_text("".join(c.swanctl_conf() for c in conns))
        self.swanctl("--load-all", "--file", str(self._seen(self.swanctl_path)))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclasses.dataclass(frozen=True)
class CertConnection(SwanConnection):
    """A connection whose sides authenticate by ``pubkey`` (certificates) or ``psk``.

    ``cert``/``cacert`` are file names in the charon's ``x509``/``x509ca`` directories;
    ``ppk_id``/``ppk`` (hex) add RFC 8784's PPK, ``ppk_required`` strongSwan's option.
    """

    local_auth: str = "pubkey"
    remote_auth: str = "pubkey"
    cert: str | None = None
    cacert: str | None = None
    ppk_id: str | None = None
    ppk: str | None = None  # 0x... hex
    ppk_required: bool = False

    def swanctl_conf(self) -> str:
        text = super().swanctl_conf()
        local_id = self.local_id or self.local_addr
        remote_id = self.remote_id or self.remote_addr
        local = [f"auth = {self.local_auth}", f'id = "{local_id}"']
        if self.local_auth == "pubkey" and self.cert:
            local.append(f"certs = {self.cert}")
        remote = [f"auth = {self.remote_auth}", f'id = "{remote_id}"']
        if self.remote_auth == "pubkey" and self.cacert:
            remote.append(f"cacerts = {self.cacert}")
        old_local = f"    local {{\n      auth = psk\n      id = {local_id}\n    }}\n"
        old_remote = f"    remote {{\n      auth = psk\n      id = {remote_id}\n    }}\n"
        assert old_local in text and old_remote in text, text
        text = text.replace(old_local, "    local {\n" + _lines(local) + "    }\n")
        text = text.replace(old_remote, "    remote {\n" + _lines(remote) + "    }\n")
        if self.ppk_id:
            required = "yes" if self.ppk_required else "no"
            text = text.replace(
                "    children {\n",
                f'    ppk_id = "{self.ppk_id}"\n    ppk_required = {required}\n    children {{\n',
                1,
            )
            text = text.replace(
                "secrets {\n",
                f'secrets {{\n  ppk-{self.name} {{\n    id = "{self.ppk_id}"\n'
                f"    secret = {self.ppk}\n  }}\n",
                1,
            )
        if "psk" not in (self.local_auth, self.remote_auth):  # no PSK secret to offer
            text = re.sub(r"  ike-[^{]*\{[^}]*\}\n", "", text)
        # A DN identity in the secrets section needs quotes like in local/remote.
        return re.sub(r"(id-[12] = )([^\n\"]*=[^\n]*)", r'\1"\2"', text)


def _lines(lines: list[str]) -> str:
    return "".join(f"      {line}\n" for line in lines)


def strongswan_pki(args: list[str], stdin: bytes | None = None, timeout: float = 60) -> bytes:
    """Run strongSwan's ``pki`` tool (Debian's 5.9.8) and return its output (DER/PEM)."""
    res = subprocess.run(
        ["pki", *args], input=stdin, capture_output=True, timeout=timeout, check=False
    )
    if res.returncode != 0:
        raise StrongSwanError(f"pki {' '.join(args)} exited {res.returncode}: {res.stderr!r}")
    return res.stdout
