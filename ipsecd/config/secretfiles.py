"""Reading PSK and manual key files: permission check, decoding, length checks.

Secrets never go into the YAML config; they sit in files that only root (or
the service account the daemon drops to) may read: mode 0600 or stricter,
like strongSwan's ``swanctl`` directory and ``ipsec.secrets``.  A file that
group or others can read or write, or that another user owns, is refused at
load time, and so is a PSK under 16 bytes unless the peer says
``allow_weak_psk: true``.  No message produced here ever contains file content.
"""

from __future__ import annotations

import base64
import binascii
import os
import pwd
import re
import stat
from pathlib import Path

from ipsecd.config.errors import ConfigError
from ipsecd.config.fields import At
from ipsecd.config.yamltree import LineMap, load_yaml
from ipsecd.crypto.registry import EncrAlgorithm, IntegAlgorithm

MAX_SECRET_FILE = 64 * 1024
MIN_PSK_BYTES = 16  # after decoding; 128 bits, the security of the weakest default cipher


def _exposure(mode: int) -> str:
    readable, writable = mode & 0o044, mode & 0o022
    if readable and writable:
        return "readable and writable"
    if readable:
        return "readable"
    if writable:
        return "writable"
    return "accessible"


def read_secret_file(
    path: Path, what: str, at: At, owners: frozenset[int] | None = None
) -> bytearray:
    """The bytes of a secret file, after checking it is a private regular file.

    ``owners``: the uids that may own it (root and the service account, see
    ``ipsecd.config.users.secret_owners``); None skips the owner check.  The
    result is a bytearray so that the caller can wipe it (``wipe``) once decoded.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise at.error(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise at.error(f"cannot open {what} file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file we opened, not whatever the path points to now
        if not stat.S_ISREG(st.st_mode):
            raise at.error(f"{what} file {path} is not a regular file")
        if owners is not None and st.st_uid not in owners:
            allowed = " or ".join(_user_name(uid) for uid in sorted(owners))
            raise at.error(
                f"{what} file {path} is owned by {_user_name(st.st_uid)}; it must be owned by"
                f" {allowed} (chown it)"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise at.error(
                f"{what} file {path} is {_exposure(mode)} by group/others (mode {mode:04o});"
                " chmod 600 it"
            )
        data = bytearray(MAX_SECRET_FILE + 1)
        size = 0
        with memoryview(data) as view:
            while size <= MAX_SECRET_FILE and (n := os.readv(fd, [view[size:]])):
                size += n
    finally:
        os.close(fd)
    if size > MAX_SECRET_FILE:
        wipe(data)
        raise at.error(f"{what} file {path} is larger than {MAX_SECRET_FILE} bytes")
    del data[size:]  # shrinks in place: the buffer is not copied
    return data


def wipe(buffer: bytearray) -> None:
    """Overwrite a secret buffer with zeros (what Python allows: bytes cannot be wiped)."""
    buffer[:] = bytes(len(buffer))


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def decode_psk(data: bytes | bytearray, path: Path, at: At, allow_weak: bool = False) -> bytes:
    """PSK file content: stripped text; ``0x...`` is hex, ``0s...`` base64 (as strongSwan).

    A PSK shorter than ``MIN_PSK_BYTES`` after decoding is refused unless
    ``allow_weak`` (``auth.allow_weak_psk``, for labs).
    """
    s = data.strip() if isinstance(data, bytearray) else bytearray(data.strip())
    try:
        psk = _decode_psk_text(s, path, at)
    finally:
        wipe(s)
    if not psk:
        raise at.error(f"psk file {path} holds an empty key")
    if len(psk) < MIN_PSK_BYTES and not allow_weak:
        raise at.error(
            f"psk file {path}: PSK has {len(psk)} bytes; at least {MIN_PSK_BYTES} are required"
            " (make one with: openssl rand -hex 32 | sed 's/^/0x/'), or set"
            " auth.allow_weak_psk: true for a lab"
        )
    return psk


def _decode_psk_text(s: bytearray, path: Path, at: At) -> bytes:
    if not s:
        raise at.error(f"psk file {path} is empty")
    if s[:2].lower() == b"0x":
        digits = re.sub(rb"[\s:]", b"", s[2:])
        try:
            psk = binascii.unhexlify(digits)
        except (binascii.Error, ValueError):
            raise at.error(f"psk file {path} starts with 0x but the rest is not hex") from None
    elif s[:2] == b"0s":
        try:
            psk = base64.b64decode(s[2:], validate=True)
        except (binascii.Error, ValueError):
            raise at.error(f"psk file {path} starts with 0s but the rest is not base64") from None
    else:
        psk = bytes(s)
    return psk


def _describe_keymat(encr: EncrAlgorithm, integ: IntegAlgorithm | None) -> str:
    parts = [f"{encr.key_len}-byte {encr.name} key"]
    if encr.salt_len:
        parts.append(f"{encr.salt_len}-byte salt")
    if integ is not None:
        parts.append(f"{integ.key_len}-byte {integ.name} key")
    return " + ".join(parts)


def read_key_file(
    path: Path,
    at: At,
    encr: EncrAlgorithm,
    integ: IntegAlgorithm | None,
    owners: frozenset[int] | None = None,
) -> tuple[bytes, bytes]:
    """A manual SA key file -> (key_in, key_out).

    The file is YAML with exactly the keys ``in`` and ``out``; each is hex
    (``0x`` prefix, spaces and colons allowed) of the encryption keying
    material (key || salt for AEADs) followed by the integrity key.
    """
    data = read_secret_file(path, "key", at, owners)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise at.error(f"key file {path} is not UTF-8 text") from None
    finally:
        wipe(data)
    try:
        tree = load_yaml(text, str(path), strings_only=True)
    except ConfigError as exc:  # the YAML message could quote a key: keep only the position
        where = f" at line {exc.line}" if exc.line else ""
        raise at.error(f"key file {path} is not valid YAML{where}") from None
    if not isinstance(tree, LineMap):
        raise at.error(f"key file {path} must be a mapping with the keys 'in' and 'out'")
    for key in tree:
        if key not in ("in", "out"):
            raise at.error(
                f"key file {path} line {tree.lines[key]}: unknown key; expected only 'in' and 'out'"
            )
    for key, line in tree.duplicates:
        raise at.error(f"key file {path} line {line}: {key!r} given twice")
    expected = encr.keymat_len + (integ.key_len if integ else 0)
    keys: list[bytes] = []
    for key in ("in", "out"):
        if key not in tree:
            raise at.error(f"key file {path} has no {key!r} key")
        line = tree.lines[key]
        raw = tree[key]
        if not isinstance(raw, str):
            raise at.error(f"key file {path} line {line}: {key!r} must be a hex string")
        digits = re.sub(r"[\s:]", "", raw)
        if digits[:2].lower() == "0x":
            digits = digits[2:]
        try:
            value = bytes.fromhex(digits)
        except ValueError:
            raise at.error(f"key file {path} line {line}: {key!r} is not hex") from None
        if len(value) != expected:
            raise at.error(
                f"key file {path} line {line}: {key!r} is {len(value)} bytes; "
                f"{encr.name}{'-' + integ.name if integ else ''} needs {expected} "
                f"({_describe_keymat(encr, integ)})"
            )
        keys.append(value)
    if keys[0] == keys[1]:
        raise at.error(
            f"key file {path}: 'in' and 'out' are the same key; each direction needs its own"
            " (one key both ways repeats nonces)"
        )
    return keys[0], keys[1]
