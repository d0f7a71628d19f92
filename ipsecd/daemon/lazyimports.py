"""The daemon's share of third-party packages: only the submodules it uses.

``pyroute2/__init__.py`` imports every part of the library (NDB with sqlite3, IPDB,
conntrack, ipset, nl80211, wireguard, plan9, …) whatever submodule is asked for, because
Python runs a package's ``__init__`` before any submodule: 13 MB of the daemon's memory
and 60 ms of its start-up, for the netlink socket, four message classes and one
exception that it uses (``ipsecd.dataplane.rtnl``). :func:`install_lazy_pyroute2` puts
an empty ``pyroute2`` package in ``sys.modules`` first: its submodules import as usual,
the names of the package itself are looked up on first use in the submodule that defines
them, and any other name loads the real ``__init__`` (so every ``from pyroute2 import
X`` still works, at the old price).  :func:`install_lazy_structlog` does the same for
``structlog``, whose ``__init__`` imports its stdlib, testing, threadlocal (with
``uuid``), twisted and types modules: 0.3 MB that the daemon never uses.

The stdlib's OpenSSL bindings load the system's libssl and libcrypto next to the OpenSSL
that cryptography carries (statically linked): ``asyncio`` imports ``ssl`` for TLS
transports, which the daemon never opens (1.2 MB), and ``hashlib``/``hmac`` import
``_hashlib`` (3.6 MB resident, most of it libcrypto's pages) where the daemon hashes a
few IKE messages and compares MACs; its HMACs come from cryptography
(``ipsecd.crypto.prf``, ``ciphers``).  :func:`import_stdlib_without_openssl` imports
those three modules as on a Python built without OpenSSL (the daemon's entry point only,
``ipsecd.daemon.start``): hashlib's built-in SHA-1/SHA-2 and ``hmac``'s
``compare_digest`` from ``_operator`` (constant-time as well).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys

#: Names of the ``pyroute2`` package and where they live (the daemon itself imports
#: submodules only; these keep ``from pyroute2 import X`` cheap for them).
PYROUTE2_NAMES = {
    "AsyncIPRoute": "pyroute2.iproute",
    "IPRoute": "pyroute2.iproute",
    "NetlinkError": "pyroute2.netlink.exceptions",
}

#: Names of the ``structlog`` package that ``ipsecd.daemon.logs`` (and the tests) use,
#: and where they live.  Its submodules (``structlog.dev``, ``structlog.testing``…)
#: are found by name; any other name loads the real ``__init__``.
STRUCTLOG_NAMES = {
    "DropEvent": "structlog.exceptions",
    "configure": "structlog._config",
    "get_config": "structlog._config",
    "get_logger": "structlog._config",
    "reset_defaults": "structlog._config",
    "wrap_logger": "structlog._config",
    "get_context": "structlog._base",
    "make_filtering_bound_logger": "structlog._native",
    "WriteLogger": "structlog._output",
    "WriteLoggerFactory": "structlog._output",
}


def install_lazy_package(name: str, names: dict[str, str]) -> bool:
    """Put an empty package ``name`` in ``sys.modules`` whose attributes load on first
    use: ``names`` from the submodule given, submodules by name, anything else through
    the real ``__init__`` (except dunder names other than ``__all__`` and
    ``__version__``, which tools probe for: AttributeError).  False if ``name`` was
    already imported (or is not installed) and nothing changed."""
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(attribute: str) -> object:
        if attribute.startswith("__") and attribute not in ("__all__", "__version__"):
            raise AttributeError(attribute)  # a probe (``__wrapped__``…): not worth 13 MB
        where = names.get(attribute)
        value: object = None
        if where is not None:
            # Another version of the package may keep the name elsewhere (structlog
            # 23.1, Debian 12's, has no ``_native``): then the whole package, as below.
            with contextlib.suppress(ImportError, AttributeError):
                value = getattr(importlib.import_module(where), attribute)
        elif importlib.util.find_spec(f"{name}.{attribute}") is not None:
            value = importlib.import_module(f"{name}.{attribute}")  # `from pyroute2 import config`
        if value is None:  # anything else: the whole package, as `import name` gives it
            del package.__dict__["__getattr__"]
            loader.exec_module(package)
            return getattr(package, attribute)
        setattr(package, attribute, value)
        return value

    package.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = package
    return True


def install_lazy_pyroute2() -> bool:
    """Make ``import pyroute2…`` load only what is used (the module docstring)."""
    return install_lazy_package("pyroute2", PYROUTE2_NAMES)


def install_lazy_structlog() -> bool:
    """Make ``import structlog`` load only what is used (the module docstring)."""
    return install_lazy_package("structlog", STRUCTLOG_NAMES)


#: What :func:`import_stdlib_without_openssl` imports, and what it hides from them.
WITHOUT_OPENSSL = ("asyncio", "hashlib", "hmac")
OPENSSL_BINDINGS = ("ssl", "_hashlib")


def import_stdlib_without_openssl() -> bool:
    """Import asyncio, hashlib and hmac with ``ssl`` and ``_hashlib`` unavailable to them;
    what is already imported stays as it is (a config with certificates has imported
    hashlib for the ``pki`` modules: asyncio still comes without ssl).  False if nothing
    changed.

    A ``None`` in ``sys.modules`` makes an import raise ``ModuleNotFoundError`` (the
    import system's documented rule), which these modules catch: asyncio keeps ``ssl =
    None`` and a TLS transport then raises ``RuntimeError`` ("ssl module not
    available"); hashlib offers its built-in algorithms (an OpenSSL-only one, say
    ``hashlib.new("ripemd160")``, raises ``ValueError``); hmac computes in Python.  The
    block ends with the imports: a later ``import ssl`` (prometheus_client's
    exposition, for the metrics endpoint) loads it as usual.
    """
    blocked = [name for name in OPENSSL_BINDINGS if name not in sys.modules]
    missing = [name for name in WITHOUT_OPENSSL if name not in sys.modules]
    if not blocked or not missing:
        return False
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        for name in missing:
            importlib.import_module(name)
    finally:
        for name in blocked:
            del sys.modules[name]
    return True
