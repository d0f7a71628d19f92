"""strongSwan with certificates, PPK and ML-KEM for the interop tests of issue 16.

What :mod:`tests.lab.strongswan` does not cover, in one place; which strongSwan runs
(Debian 12's 5.9.8, or 6.1 in the root of :mod:`tests.lab.strongswan6`) is its
:class:`~tests.lab.strongswan.StrongSwan`, as for every other charon:

* :class:`SwanCharon` — a :class:`~tests.lab.strongswan.Charon` with the plugins
  certificates need (x509, pkcs8, revocation, constraints, ...), ``rsa_pss``, and a
  credential directory beside its swanctl.conf (``x509/``, ``x509ca/``, ``x509crl/``,
  ``private/``: swanctl reads them relative to the file);
* :class:`CertConnection` — a connection whose sides authenticate by ``pubkey`` or
  ``psk``, with ``cacerts``, ``ppk_id``/``ppk_required`` and the PPK secret;
* :func:`strongswan_pki` — certificates made by strongSwan's own ``pki`` tool.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

from tests.lab.strongswan import (
    HOST,
    PLUGINS,
    Charon,
    StrongSwan,
    StrongSwanError,
    SwanConnection,
)
from tests.lab.topology import Topology

#: Plugins for certificates, CRLs, RSA-PSS and Ed25519 on top of the PSK set.
CERT_PLUGINS = ("pkcs8", "constraints", "revocation", "mgf1")


class SwanCharon(Charon):
    """A charon of ``swan`` with certificate plugins and a credential directory."""

    def __init__(
        self,
        topo: Topology,
        ns: str,
        swan: StrongSwan = HOST,
        *,
        directory: Path | None = None,
        retransmit_tries: int = 3,
        retransmit_timeout: float = 1.0,
        fragment_size: int | None = None,
        rsa_pss: bool = False,
    ) -> None:
        super().__init__(
            topo, ns, directory, retransmit_tries, retransmit_timeout, fragment_size, swan=swan
        )
        conf = self.conf_path.read_text()
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
        for sub in ("x509", "x509ca", "x509crl", "private"):
            (self.dir / sub).mkdir(exist_ok=True)

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
