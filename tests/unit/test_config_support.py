"""Shared helpers for the config tests: a minimal valid file and secret files."""

from __future__ import annotations

import os
from pathlib import Path

from ipsecd.config import Config, ConfigError, parse_config

PSK = b"correct horse battery staple"
# aes128gcm16: 16-byte key + 4-byte salt per direction.
KEY_IN = bytes(range(1, 21))
KEY_OUT = bytes(range(101, 121))

# Line numbers matter: the tests assert them.
BASE = """\
gateway:
  listen: [192.0.2.1]
peers:
  - name: site-b
    remote_address: 192.0.2.2
    local_ts: [10.1.0.0/24]
    remote_ts: [10.2.0.0/24]
    auth:
      psk_file: b.psk
"""

# A second IKE peer to append to BASE (lines 10-15).
SECOND_PEER = """\
  - name: site-c
    remote_address: 192.0.2.3
    local_ts: [10.1.0.0/24]
    remote_ts: [10.3.0.0/24]
    auth:
      psk_file: b.psk
"""


def write_secret_files(directory: Path) -> Path:
    """b.psk and lab.keys, the secret files BASE and the manual examples name."""
    write_secret(directory / "b.psk", PSK)
    write_keys(directory / "lab.keys")
    return directory


def write_secret(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def write_keys(path: Path, key_in: bytes = KEY_IN, key_out: bytes = KEY_OUT, mode: int = 0o600):
    return write_secret(path, f"in: 0x{key_in.hex()}\nout: {key_out.hex()}\n", mode)


def parse(text: str) -> Config:
    """Parse as ``t.yaml`` in the current directory (the tests chdir to tmp_path)."""
    return parse_config(text, "t.yaml")


def error(text: str) -> ConfigError:
    try:
        parse(text)
    except ConfigError as exc:
        return exc
    raise AssertionError("expected a ConfigError")
