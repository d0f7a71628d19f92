"""Reading a PPK file (RFC 8784 post-quantum preshared key) for ``ppk_file``.

The file rules are the PSK file rules (:func:`ipsecd.config.secretfiles.read_secret_file`:
a regular file, mode 0600 or stricter, at most 64 KiB), and the content is
written as strongSwan writes secrets: ``0x...`` hex (spaces and colons
allowed), ``0s...`` base64, anything else the stripped text itself.

RFC 8784 §3 asks for a PPK with at least 256 bits of entropy; a key shorter
than 16 bytes cannot give post-quantum protection (Grover halves its
strength) and is refused.  No message here contains file content.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from ipsecd.config.fields import At
from ipsecd.config.secretfiles import read_secret_file

__all__ = ["MIN_PPK_BYTES", "read_ppk_file", "decode_ppk"]

MIN_PPK_BYTES = 16


def decode_ppk(data: bytes, path: Path, at: At) -> bytes:
    """PPK file content -> key bytes, or a ConfigError naming the file and the problem."""
    s = data.strip()
    if not s:
        raise at.error(f"ppk file {path} is empty")
    if s[:2].lower() == b"0x":
        try:
            ppk = binascii.unhexlify(re.sub(rb"[\s:]", b"", s[2:]))
        except (binascii.Error, ValueError):
            raise at.error(f"ppk file {path} starts with 0x but the rest is not hex") from None
    elif s[:2] == b"0s":
        try:
            ppk = base64.b64decode(s[2:], validate=True)
        except (binascii.Error, ValueError):
            raise at.error(f"ppk file {path} starts with 0s but the rest is not base64") from None
    else:
        ppk = s
    if len(ppk) < MIN_PPK_BYTES:
        raise at.error(
            f"ppk file {path} holds a {len(ppk)}-byte key; a post-quantum preshared key needs"
            f" at least {MIN_PPK_BYTES} bytes (RFC 8784 asks for 256 bits of entropy:"
            " e.g. 0x followed by 64 hex digits from 'head -c32 /dev/urandom | xxd -p -c64')"
        )
    return ppk


def read_ppk_file(path: Path, at: At) -> bytes:
    """Read and decode a PPK file after the PSK file permission checks."""
    return decode_ppk(read_secret_file(path, "ppk", at), path, at)
