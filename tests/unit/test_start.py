"""``ipsecd run``'s start-up order (ipsecd.daemon.start): the config is parsed before the
daemon's modules are imported, and the running daemon keeps no ``key_lines``.

Each check runs in a fresh interpreter: this one has imported the daemon already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.scale import PSK, responder_config
from ipsecd.config import load_config

REPO = Path(__file__).resolve().parents[2]

#: Imported by the daemon, and not by the config loader: they must come after parsing.
#: (Not all of the IKE core: the config's validation imports its codecs and proposals.)
DAEMON_MODULES = (
    "asyncio",
    "structlog._config",  # not the package: lazyimports.py puts an empty one first
    "pyroute2.netlink.nlsocket",
    "ipsecd.ike.manager",
    "ipsecd.daemon.app",
)


#: What a certificate (or our key) in the config loads, and a PSK-only daemon never does:
#: 2 MB of an idle one-peer daemon (bench/README.md, "Memory round 2").
X509_MODULES = (
    "cryptography.x509",
    "ipsecd.pki.certs",
    "ipsecd.pki.trust",
    "ipsecd.pki.validate",
    "ipsecd.pki.payloads",
)


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _config(tmp_path: Path) -> Path:
    (tmp_path / "psk").write_text(PSK + "\n")
    (tmp_path / "psk").chmod(0o600)
    path = tmp_path / "c.yaml"
    path.write_text(responder_config(3, tmp_path, ["192.0.2.2"], any_peer=False))
    return path


def test_start_imports_none_of_the_daemon() -> None:
    code = (
        "import sys, json, ipsecd.daemon.start\n"
        f"print(json.dumps([m for m in {DAEMON_MODULES!r} if m in sys.modules]))\n"
    )
    assert json.loads(_python(code)) == []


def test_config_is_parsed_before_the_daemon_modules_and_kept_without_key_lines(
    tmp_path: Path,
) -> None:
    """run_daemon with the real loader and preflight, and a stand-in for serve (the
    daemon itself): what was imported when the loader ran, what serve was given."""
    path = _config(tmp_path)
    code = f"""
import json, sys, types
import ipsecd.daemon.start as start

seen = {{}}
load = start.load_config
def load_config(path):
    # Without ipsecd.daemon.app: the stand-in below is in sys.modules from the start.
    seen["imported"] = [m for m in {DAEMON_MODULES[:-1]!r} if m in sys.modules]
    return load(path)
start.load_config = load_config

def serve(config):
    seen["key_lines"] = len(config.key_lines)
    seen["peers"] = len(config.peers)
    return 7
app = types.ModuleType("ipsecd.daemon.app")  # not the real one: it would run the daemon
app.serve = serve
sys.modules["ipsecd.daemon.app"] = app
seen["exit"] = start.run_daemon({str(path)!r})
print(json.dumps(seen))
"""
    seen = json.loads(_python(code).splitlines()[-1])
    assert seen == {"imported": [], "key_lines": 0, "peers": 3, "exit": 7}


def test_without_key_lines_keeps_everything_else(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    assert config.key_lines["peers[2].remote_ts"] > 0
    kept = config.without_key_lines()
    assert kept.key_lines == {}
    assert kept == config  # key_lines never take part in comparing configs
    assert kept.peers is config.peers
    assert kept.without_key_lines() is kept


def test_idle_daemon_imports_none_of_what_it_loads_lazily(tmp_path: Path) -> None:
    """After ``run_daemon``'s imports, the daemon's and its start-up handshake (warm_up):
    no numpy (the bulk data path), no prometheus_client (the metrics endpoint), no
    pyroute2 package ``__init__`` (NDB, sqlite3: lazyimports.py) nor ``pyroute2.iproute``
    (IPRoute: with unittest.mock and difflib; the daemon uses pyroute2's socket and
    messages, rtnl.py), no difflib of its own (suggestions for a config's typos), no ssl
    or _hashlib (the stdlib's OpenSSL: lazyimports.py), no structlog parts beyond what it
    logs with, and with pre-shared keys no X.509 (``X509_MODULES``), no signatures, no
    key serialization."""
    path = _config(tmp_path)
    code = f"""
import json, sys, types
import ipsecd.daemon.start as start

def serve(config):
    # run_daemon has made its imports: now the real shell's (this stand-in runs nothing).
    del sys.modules["ipsecd.daemon.app"]
    import ipsecd.daemon.app
    from ipsecd.daemon.warmup import warm_up
    assert warm_up(config) is not None
    lazy = ("numpy", "prometheus_client", "pyroute2.ndb", "sqlite3", "pyroute2.iproute")
    lazy += ("unittest", "difflib", "ssl", "_ssl", "_hashlib")
    lazy += ("structlog.stdlib", "structlog.testing", "structlog.threadlocal", "uuid")
    # signatures (RSA, ECDSA, Ed25519) and cryptography's key serialization: certificates
    lazy += ("ipsecd.ike.signature_auth", "cryptography.hazmat.primitives.serialization")
    lazy += ("concurrent.futures.thread",)  # the resolver's pool: no host name configured
    lazy += {X509_MODULES!r}
    print(json.dumps([m for m in lazy if m in sys.modules]))
    return 0
app = types.ModuleType("ipsecd.daemon.app")
app.serve = serve
sys.modules["ipsecd.daemon.app"] = app
start.run_daemon({str(path)!r})
"""
    assert json.loads(_python(code).splitlines()[-1]) == []


def test_a_certificate_in_the_config_loads_x509_when_it_is_read(tmp_path: Path) -> None:
    """At start or at a reload (both run load_config): a PSK config leaves X.509 out, the
    same daemon loading a config with certificates then has it, and the certificate half
    of the IKE authentication (peer_auth, whose imports are inside its functions) works."""
    from tests.unit.pki_support import ca, gateway, write_credentials

    psk = _config(tmp_path)
    root = ca()
    own = gateway(root, ("192.0.2.2", "b.example"), "C=CH, O=Test, CN=b")
    lines = write_credentials(tmp_path / "creds", "b", own, (root,))
    auth = "{" + ", ".join(lines) + ", remote_id: '@a0.example'}"
    text = psk.read_text()
    certs = tmp_path / "certs.yaml"
    certs.write_text(
        "".join(
            f"    auth: {auth}\n" if line.startswith("    auth:") else line + "\n"
            for line in text.splitlines()
        )
    )
    code = f"""
import json, sys
from ipsecd.config import load_config
from ipsecd.daemon.app import serve
from ipsecd.ike.peer_auth import cert_payloads, certreq_payload
x509 = {X509_MODULES!r}
seen = {{"psk": [m for m in x509 if m in sys.modules]}}
config = load_config({str(certs)!r})
seen["certificates"] = [m for m in x509 if m in sys.modules]
auth = config.peers[0].auth
seen["payloads"] = [len(cert_payloads(auth)), len(certreq_payload(auth.trust))]
print(json.dumps(seen))
"""
    seen = json.loads(_python(code).splitlines()[-1])
    # (pki.validate and pki.payloads: at the first certificate handshake)
    assert seen == {
        "psk": [],
        "certificates": ["cryptography.x509", "ipsecd.pki.certs", "ipsecd.pki.trust"],
        "payloads": [1, 1],
    }
