"""What the daemon leaves unimported (ipsecd.daemon.lazyimports): the stdlib without its
OpenSSL bindings, and pyroute2 and structlog as empty packages whose names load on first use.

Each check runs in a fresh interpreter: this one has imported asyncio and ssl already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_stdlib_without_openssl_refuses_tls_loudly_and_ssl_still_loads_later() -> None:
    seen = _python("""
import json, socket, sys
from ipsecd.daemon.lazyimports import import_stdlib_without_openssl
seen = {"first": import_stdlib_without_openssl(), "again": import_stdlib_without_openssl()}
import asyncio, hashlib, hmac, _operator
seen["bindings"] = [m for m in ("ssl", "_ssl", "_hashlib") if m in sys.modules]
seen["asyncio's ssl"] = [m.ssl for m in (asyncio.base_events, asyncio.sslproto)]

async def tls() -> str:
    a, b = socket.socketpair()
    try:
        await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, sock=a, ssl=True, server_hostname="x"
        )
    except RuntimeError as exc:
        return str(exc)
    finally:
        a.close(), b.close()
    return "connected"

seen["tls"] = asyncio.run(tls())
# hashlib's built-in SHA-2 and hmac's constant-time compare from _operator
seen["sha256"] = hashlib.sha256(b"abc").hexdigest()[:16]
seen["hmac"] = hmac.digest(b"key", b"abc", "sha256").hex()[:16]
seen["compare_digest"] = hmac.compare_digest is _operator._compare_digest
try:
    hashlib.new("ripemd160")  # OpenSSL's only
    seen["ripemd160"] = "made"
except ValueError:
    seen["ripemd160"] = "refused"
import ssl  # the metrics endpoint's prometheus_client imports it at module level
import prometheus_client.exposition
seen["ssl later"] = ssl.OPENSSL_VERSION.startswith("OpenSSL")
print(json.dumps(seen))
""")
    assert seen == {
        "first": True,
        "again": False,
        "bindings": [],
        "asyncio's ssl": [None, None],
        "tls": "stdlib ssl module not available",
        "sha256": "ba7816bf8f01cfea",  # FIPS 180-2 B.1
        "hmac": "9c196e32dc0175f8",
        "compare_digest": True,
        "ripemd160": "refused",
        "ssl later": True,
    }


def test_what_is_imported_already_stays_and_the_rest_comes_without_openssl() -> None:
    """A config with certificates has imported hashlib (pki): asyncio still has no ssl."""
    seen = _python("""
import hashlib, json, sys
from ipsecd.daemon.lazyimports import import_stdlib_without_openssl
seen = {"done": import_stdlib_without_openssl()}
import asyncio
seen["asyncio's ssl"] = asyncio.sslproto.ssl
seen["bindings"] = [m for m in ("ssl", "_ssl", "_hashlib") if m in sys.modules]
seen["again"] = import_stdlib_without_openssl()
print(json.dumps(seen))
""")
    assert seen == {"done": True, "asyncio's ssl": None, "bindings": ["_hashlib"], "again": False}


def test_structlog_loads_what_the_daemon_logs_with_and_the_rest_on_first_use() -> None:
    seen = _python("""
import io, json, sys
import ipsecd.daemon  # installs the lazy packages
from ipsecd.daemon import logs
out = io.StringIO()
logs.configure("info", "json", stream=out)
logs.get_logger().info("hello", peer="p0")
unused = ("structlog.stdlib", "structlog.testing", "structlog.threadlocal", "uuid")
seen = {"line": json.loads(out.getvalue())["event"]}
seen["unused"] = [m for m in unused if m in sys.modules]
import structlog
from structlog.testing import capture_logs  # a submodule, as in the tests
with capture_logs() as captured:
    structlog.get_logger().warning("captured")
seen["captured"] = [c["event"] for c in captured]
seen["whole package"] = structlog.PrintLogger.__name__  # not in STRUCTLOG_NAMES
seen["all"] = "configure" in structlog.__all__
print(json.dumps(seen))
""")
    assert seen == {
        "line": "hello",
        "unused": [],
        "captured": ["captured"],
        "whole package": "PrintLogger",
        "all": True,
    }


def test_lazy_package_names_exist_where_they_are_said_to_live() -> None:
    """With the versions installed here the names come from their submodules (the memory
    the module docstring counts); a release that moves one costs that memory only
    (:func:`test_a_name_moved_elsewhere_loads_the_whole_package`)."""
    import importlib

    from ipsecd.daemon.lazyimports import PYROUTE2_NAMES, STRUCTLOG_NAMES

    for name, where in {**PYROUTE2_NAMES, **STRUCTLOG_NAMES}.items():
        assert hasattr(importlib.import_module(where), name), (name, where)


def test_a_name_moved_elsewhere_loads_the_whole_package() -> None:
    """Debian 12's structlog 23.1 has no ``structlog._native``: the real ``__init__``
    then gives the name (found by the stock-Debian install test)."""
    seen = _python("""
import json, sys
from ipsecd.daemon.lazyimports import install_lazy_package
assert not [m for m in sys.modules if m.startswith("structlog.")]
sys.modules.pop("structlog")  # ipsecd.daemon's lazy structlog, nothing loaded yet
assert install_lazy_package("structlog", {
    "make_filtering_bound_logger": "structlog._no_such_module",
    "get_logger": "structlog._config",
    "configure": "structlog.dev",  # a module without that name
})
import structlog
seen = {"get_logger": callable(structlog.get_logger), "whole": "structlog.stdlib" in sys.modules}
seen["make"] = callable(structlog.make_filtering_bound_logger)
seen["whole after"] = "structlog.stdlib" in sys.modules
seen["configure"] = structlog.configure.__module__
print(json.dumps(seen))
""")
    assert seen == {
        "get_logger": True,
        "whole": False,
        "make": True,
        "whole after": True,
        "configure": "structlog._config",
    }
