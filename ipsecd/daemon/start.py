"""``ipsecd run``: the start-up order that keeps an idle daemon small (issue 17).

Parsing and validating the config allocates about three times what the resulting
``Config`` keeps (a 13 MB peak for 4 MB with 1000 peers).  The small objects it frees
leave holes in pymalloc's arenas, and an idle daemon never fills them: with every module
imported first, 1000 peers cost 20 MB of resident memory.  Loaded before the daemon's
other modules (asyncio, pyroute2, structlog, the IKE manager, the shell and the data
plane), the holes are filled by those modules' objects instead: 8 MB less (bench/README.md,
"Memory round").  So this module imports nothing of the daemon until the config is loaded.

asyncio, hashlib and hmac are imported first, without the stdlib's OpenSSL bindings
(``lazyimports.import_stdlib_without_openssl``: 4.8 MB); this is the daemon's entry point
only (the CLI tools and the tests import them as usual).
"""

from __future__ import annotations

from ipsecd.config import load_config
from ipsecd.daemon.lazyimports import import_stdlib_without_openssl


def run_daemon(config_path: str) -> int:
    """Load the config, check the machine, then run the daemon; raises ``ConfigError``."""
    config = load_config(config_path)
    # Only now: their objects fill what parsing freed (the module docstring).
    import_stdlib_without_openssl()  # before structlog.stdlib imports asyncio with ssl
    from ipsecd.daemon import logs
    from ipsecd.daemon.app import serve
    from ipsecd.daemon.preflight import log_findings

    logs.configure(config.log.level, config.log.format)
    log_findings(config, logs.get_logger())  # routes vs. config, IP forwarding (still root)
    # Those warnings were the last use of key_lines: the running daemon keeps the rest.
    config = config.without_key_lines()
    return serve(config)
