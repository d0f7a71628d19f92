"""Debian roots the namespace tests build from Debian's own packages, and where they are kept.

Two tests build a root with ``debootstrap``: the stock-Debian install test (a bookworm
minbase) and the strongSwan 6.1 peer (:mod:`tests.lab.strongswan6`, a trixie root with
sid's strongSwan).  Both download from the archive this machine's apt uses (on the test
machines no other host is reachable) and keep the result in :data:`CACHE` between runs.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

#: Built roots and download caches, kept between runs on one machine.
CACHE = Path(os.environ.get("IPSECD_TEST_CACHE", "/var/cache/ipsecd-test"))


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (no other host may be reachable)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def mirror_problem(mirror: str, suite: str, timeout: float = 15.0) -> str | None:
    """Why ``suite`` cannot be fetched from ``mirror`` (``None`` if its Release file is
    there): one HEAD request, so a machine without the archive is told so in seconds."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/Release"
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"{url} answered HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"Debian mirror unreachable: {url}: {exc}"
