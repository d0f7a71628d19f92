"""The asyncio shell: wiring, timers, signals, control socket, sd_notify, metrics."""

from ipsecd.daemon.lazyimports import install_lazy_pyroute2, install_lazy_structlog

# Before any module of the daemon (or the data plane under it) imports pyroute2: its
# package __init__ costs 13 MB for the two classes the daemon uses (lazyimports.py).
install_lazy_pyroute2()
install_lazy_structlog()  # its __init__ imports every part of it (lazyimports.py)
