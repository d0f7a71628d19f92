"""The version both commands print for ``--version``: the installed distribution's."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """``0.1.0``; ``unknown`` when run from a tree that was never installed."""
    try:
        return metadata.version("ipsecd")
    except metadata.PackageNotFoundError:
        return "unknown"


def version_line() -> str:
    """What ``--version`` prints (argparse expands ``%(prog)s``)."""
    return f"%(prog)s {version()}"
