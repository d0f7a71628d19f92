"""Entry points: a config file (or text) -> ``Config``, or a ``ConfigError``.

Reading happens in three steps, each in its own module: ``yamltree`` parses
YAML keeping line numbers, ``sections`` checks every key against the schema
tables and builds the frozen dataclasses of ``schema``, ``secretfiles`` reads
the PSK and key files the config points to.
"""

from __future__ import annotations

from pathlib import Path

from ipsecd.config.errors import ConfigError
from ipsecd.config.schema import Config
from ipsecd.config.sections import build_config
from ipsecd.config.yamltree import load_yaml


def parse_config(text: str, path: str | Path) -> Config:
    """Validate config ``text`` as if read from ``path``.

    ``path`` names the file in error messages and anchors relative
    ``psk_file`` / ``key_file`` paths; those secret files are read now.
    """
    file = str(path)
    return build_config(load_yaml(text, file), file)


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at ``path``; raises ``ConfigError``."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(file, None, None, f"cannot read config file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(file, line, None, "not UTF-8 text") from None
    return parse_config(text, file)
