"""The cyclic garbage collector held off while a status answer is built.

A status (``ipsecctl status``, a metrics scrape) makes some fifty objects per peer, none
of them in a cycle: with 10 000 peers the collections that those allocations set off
were 40 % of the answer's time (0.90 s against 0.55 s with the collector off, the status
of bench/scale.py's responder built in one process), time in which the daemon moves no
packet.  Garbage made meanwhile elsewhere is collected at the next collection after.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection inside the block (the collector's state is restored)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
