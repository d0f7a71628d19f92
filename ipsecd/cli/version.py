"""The version both commands print for ``--version``: the installed distribution's."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def version() -> str:
    """``0.1.0``; ``unknown`` when run from a tree that was never installed."""
    # Imported here: importlib.metadata (and the email package under it) costs 16 ms and
    # 2 MB of every start of the daemon, which never prints its version.
    from importlib import metadata

    try:
        return metadata.version("ipsecd")
    except metadata.PackageNotFoundError:
        return "unknown"


def version_line() -> str:
    """What ``--version`` prints (argparse expands ``%(prog)s``)."""
    return f"%(prog)s {version()}"


class VersionAction(argparse.Action):
    """``--version``: argparse's own action, with the version looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any):
        kw.setdefault("help", "show program's version number and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        formatter = parser._get_formatter()
        formatter.add_text(version_line())
        parser._print_message(formatter.format_help(), sys.stdout)
        parser.exit()
