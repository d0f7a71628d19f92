"""Declarative field specs: one table per config section, one converter per value.

A ``Section`` lists its ``Field``s (YAML key, converter, default).  Reading a
section checks that the YAML value is a mapping, refuses unknown keys (with a
"did you mean" suggestion) and repeated keys, converts every given value and
fills in defaults.  A converter is any ``(value, at) -> typed value`` callable
that raises ``at.error(...)``; the factories below cover the config's value
kinds, so a new option is one ``Field`` line plus a dataclass field::

    Field("rekey_time", duration(min_seconds=60), default=14400)
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from ipsecd.config.errors import ConfigError, ErrorCollector
from ipsecd.config.schema import Identity
from ipsecd.crypto.proposals import Proposal, ProposalError, parse_proposal
from ipsecd.selectors import TrafficSelector


@dataclass(frozen=True, slots=True)  # one per key while a config is read: kept small
class At:
    """Where a value sits: file, key path (``peers[0].esp.proposals[1]``) and line."""

    file: str
    path: str
    line: int

    def key(self, mapping: Any, name: str) -> At:
        lines = getattr(mapping, "lines", {})
        path = f"{self.path}.{name}" if self.path else name
        return At(self.file, path, lines.get(name, self.line))

    def item(self, seq: Any, index: int) -> At:
        lines = getattr(seq, "lines", [])
        line = lines[index] if index < len(lines) else self.line
        return At(self.file, f"{self.path}[{index}]", line)

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.file, self.line, self.path or None, message)


Converter = Callable[[Any, At], Any]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Field:
    """One key of a section: its converter and its default (``REQUIRED`` if none)."""

    key: str
    convert: Converter
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Values(Mapping[str, Any]):
    """A read section: converted values by key, plus where each one was written."""

    __slots__ = ("_values", "_where", "_raw", "here")  # one per section while reading

    def __init__(
        self, values: dict[str, Any], where: dict[str, At], here: At, raw: Any = None
    ) -> None:
        self._values = values
        self._where = where
        self._raw = raw if raw is not None else {}  # the YAML mapping, for item lines
        self.here = here  # the section itself

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def given(self, key: str) -> bool:
        """True if the key was written in the file (not defaulted)."""
        return key in self._where

    def item_at(self, key: str, index: int) -> At:
        """Where item ``index`` of the list under ``key`` was written."""
        return self.at(key).item(self._raw.get(key), index)

    def at(self, key: str) -> At:
        """Where ``key`` was written; the section itself for a defaulted key."""
        return self._where.get(key) or At(
            self.here.file, f"{self.here.path}.{key}" if self.here.path else key, self.here.line
        )


def closest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The choice ``word`` is most likely a misspelling of, if any."""
    import difflib  # only for a config with a mistake: not kept by every running daemon

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and len(word) >= 3:  # `psk` for `psk_file`, `proposal` for `proposals`
        close = [c for c in choices if c.startswith(word) or word.startswith(c)][:1]
    return close[0] if close else None


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` or a list of the valid choices."""
    close = closest(word, choices)
    if close is not None:
        return f"did you mean {close!r}?"
    return "expected one of: " + ", ".join(choices)


class Section:
    """A mapping with a fixed set of keys."""

    def __init__(self, *fields: Field, what: str = "a mapping") -> None:
        self.fields = fields
        self.by_key = {f.key: f for f in fields}
        self.what = what

    def read(self, value: Any, at: At) -> Values:
        """The section's values, defaults filled in; every problem in one ``ConfigError``."""
        errors = ErrorCollector()
        values = self.read_partial(value, at, errors)
        errors.raise_if_any()
        return values

    def read_partial(self, value: Any, at: At, errors: ErrorCollector) -> Values:
        """What can be read: a key whose value is wrong (or a required key that is
        missing) is left out and its error added to ``errors``."""
        if value is None:  # `log:` with every sub-key commented out
            value = {}
        if not isinstance(value, dict):
            errors.add(
                at.error(
                    f"expected {self.what} with keys {', '.join(self.by_key)};"
                    f" got {describe(value)}"
                )
            )
            return Values({}, {}, at)
        for key in value:
            if key not in self.by_key:
                errors.add(
                    at.key(value, key).error(
                        f"unknown key {key!r}; {suggest(key, list(self.by_key))}"
                    )
                )
        lines: dict[str, int] = getattr(value, "lines", {})
        for key, line in getattr(value, "duplicates", ()):
            first = lines[key]
            errors.add(
                At(at.file, at.key(value, key).path, line).error(
                    f"key given twice (first at line {first}); remove one"
                )
            )
        values: dict[str, Any] = {}
        where: dict[str, At] = {}
        for key, raw in value.items():
            if key not in self.by_key:
                continue
            sub = at.key(value, key)
            with errors.collecting():
                values[key] = self.by_key[key].convert(raw, sub)
                where[key] = sub
        # A misspelt required key is reported once, as the unknown key it is.
        misspelt = {closest(key, list(self.by_key)) for key in value if key not in self.by_key}
        for f in self.fields:
            if f.key in values or f.key in value:
                continue
            if not f.required:
                values[f.key] = f.default
            elif f.key not in misspelt:
                errors.add(at.error(f"missing required key {f.key!r}"))
        return Values(values, where, at, value)


# -- describing YAML values in messages ---------------------------------------------------


def describe(value: Any) -> str:
    """What a YAML value is, for 'expected X, got Y' messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, date):
        return f"a date ({value})"
    return f"a {type(value).__name__}"


def _expect_str(value: Any, at: At, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise at.error(f"expected {what}, got {describe(value)}")
    return value


# -- converters -----------------------------------------------------------------------------


def section(spec: Section) -> Converter:
    """A nested section; gives ``Values``."""
    return spec.read


def text(
    pattern: str | None = None, what: str = "a string", max_len: int | None = None
) -> Converter:
    regex = re.compile(pattern) if pattern else None

    def convert(value: Any, at: At) -> str:
        s = _expect_str(value, at, what)
        if max_len is not None and len(s) > max_len:
            raise at.error(f"{s!r} is longer than {max_len} characters")
        if regex is not None and not regex.fullmatch(s):
            raise at.error(f"{s!r} is not {what}")
        return s

    return convert


def choice(*options: str) -> Converter:
    def convert(value: Any, at: At) -> str:
        s = _expect_str(value, at, "one of " + ", ".join(options))
        if s not in options:
            raise at.error(f"{s!r} is not valid; {suggest(s, options)}")
        return s

    return convert


def integer(min_value: int | None = None, max_value: int | None = None) -> Converter:
    def convert(value: Any, at: At) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise at.error(f"expected an integer, got {describe(value)}")
        too_small = min_value is not None and value < min_value
        if too_small or max_value is not None and value > max_value:
            if max_value is None:
                raise at.error(f"{value} is too small (at least {min_value})")
            if min_value is None:
                raise at.error(f"{value} is too large (at most {max_value})")
            raise at.error(f"{value} is out of range {min_value}..{max_value}")
        return value

    return convert


def number(min_value: float, max_value: float) -> Converter:
    """A real number (int or float) within [min_value, max_value]."""

    def convert(value: Any, at: At) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise at.error(f"expected a number, got {describe(value)}")
        if not min_value <= value <= max_value:
            raise at.error(f"{value} is out of range {min_value}..{max_value}")
        return float(value)

    return convert


def port() -> Converter:
    return integer(1, 65535)


def boolean() -> Converter:
    def convert(value: Any, at: At) -> bool:
        if not isinstance(value, bool):
            raise at.error(f"expected true or false, got {describe(value)}")
        return value

    return convert


def optional(inner: Converter) -> Converter:
    """``null`` means None; anything else goes through ``inner``."""
    return lambda value, at: None if value is None else inner(value, at)


def auto_or(inner: Converter) -> Converter:
    """The word ``auto`` means None; anything else goes through ``inner``."""
    return lambda value, at: None if value == "auto" else inner(value, at)


def list_of(item: Converter, *, min_items: int = 0, unique: bool = False) -> Converter:
    """A YAML list; gives a tuple.  ``unique`` refuses repeated (converted) items."""

    def convert(value: Any, at: At) -> tuple[Any, ...]:
        if not isinstance(value, list):
            hint = f"; write [{value}]" if isinstance(value, str | int) and value != "" else ""
            raise at.error(f"expected a list, got {describe(value)}{hint}")
        if len(value) < min_items:
            raise at.error(f"needs at least {min_items} item{'s' if min_items > 1 else ''}")
        out: list[Any] = []
        index: list[int] = []  # the item number of each converted value
        errors = ErrorCollector()
        for i, raw in enumerate(value):
            sub = at.item(value, i)
            with errors.collecting():
                converted = item(raw, sub)
                if unique and converted in out:
                    first = index[out.index(converted)]
                    raise sub.error(f"{raw!r} is listed twice (also item [{first}])")
                out.append(converted)
                index.append(i)
        errors.raise_if_any()
        return tuple(out)

    return convert


def ip_address() -> Converter:
    def convert(value: Any, at: At) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        s = _expect_str(value, at, "an IP address")
        try:
            return ipaddress.ip_address(s)
        except ValueError:
            raise at.error(f"{s!r} is not an IPv4/IPv6 address") from None

    return convert


def ip_interface() -> Converter:
    """``10.1.0.1/24``: an address with its prefix length."""

    def convert(value: Any, at: At) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        s = _expect_str(value, at, "an address/prefix")
        if "/" not in s:
            raise at.error(f"{s!r} needs a prefix length (e.g. {s}/24)")
        try:
            return ipaddress.ip_interface(s)
        except ValueError:
            raise at.error(f"{s!r} is not an IPv4/IPv6 address/prefix") from None

    return convert


def prefix() -> Converter:
    """``10.1.0.0/24`` (or a bare address, /32 or /128) -> ``TrafficSelector``."""

    def convert(value: Any, at: At) -> TrafficSelector:
        s = _expect_str(value, at, "an IP prefix")
        try:
            net = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise at.error(f"{s!r} is not an IPv4/IPv6 prefix") from None
        if "/" in s and ipaddress.ip_interface(s).ip != net.network_address:
            raise at.error(f"{s!r} has host bits set; did you mean {net}?")
        return TrafficSelector.from_prefix(str(net))

    return convert


@functools.lru_cache(maxsize=256)
def _parsed_proposal(text: str, protocol: str) -> Proposal:
    """``parse_proposal``, once per distinct text: peers mostly share their proposals, and
    a Proposal is immutable, so 10 000 peers hold one object instead of 10 000 (and the
    parse, ~30 µs each, is done once)."""
    return parse_proposal(text, protocol)


def proposal(protocol: str) -> Converter:
    """A strongSwan proposal string, parsed with ``parse_proposal``."""

    def convert(value: Any, at: At) -> Proposal:
        s = _expect_str(value, at, f"an {protocol.upper()} proposal string")
        try:
            return _parsed_proposal(s, protocol)
        except ProposalError as exc:
            raise at.error(str(exc)) from None

    return convert


def identity() -> Converter:
    def convert(value: Any, at: At) -> Identity:
        s = _expect_str(value, at, "an identity")
        try:
            return Identity.parse(s)
        except ValueError as exc:
            raise at.error(str(exc)) from None

    return convert


def file_path() -> Converter:
    """A file path; a relative one is taken relative to the config file's directory."""

    def convert(value: Any, at: At) -> Path:
        s = _expect_str(value, at, "a file path")
        if not s.strip():
            raise at.error("file path is empty")
        path = Path(s)
        return path if path.is_absolute() else Path(at.file).parent / path

    return convert


def socket_path() -> Converter:
    def convert(value: Any, at: At) -> Path:
        s = _expect_str(value, at, "a path")
        if not s.strip():
            raise at.error("path is empty")
        return Path(s)

    return convert


def host_port() -> Converter:
    """``127.0.0.1:9810`` or ``[::1]:9810`` -> (address text, port)."""

    def convert(value: Any, at: At) -> tuple[str, int]:
        s = _expect_str(value, at, "ADDRESS:PORT")
        m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", s)
        if m is None:
            raise at.error(f"{s!r} is not ADDRESS:PORT (e.g. 127.0.0.1:9810 or [::1]:9810)")
        host, digits = (m[1], m[2]) if m[1] is not None else (m[3], m[4])
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise at.error(f"{host!r} in {s!r} is not an IP address") from None
        if m[3] is not None and address.version == 6:
            raise at.error(f"write an IPv6 address in brackets: [{host}]:{digits}")
        number = int(digits)
        if not 1 <= number <= 65535:
            raise at.error(f"port {number} in {s!r} is out of range 1..65535")
        return str(address), number

    return convert


def spi() -> Converter:
    """An ESP SPI (RFC 4303 §2.1): 256..2**32-1 (1-255 are reserved, 0 is never sent)."""

    def convert(value: Any, at: At) -> int:
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise at.error(f"{value!r} is not an SPI (an integer, 0x hex allowed)") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise at.error(f"expected an SPI (an integer, 0x hex allowed), got {describe(value)}")
        if not 256 <= value <= 0xFFFFFFFF:
            raise at.error(
                f"SPI {value:#x} is out of range 0x100..0xffffffff (RFC 4303 §2.1: 1-255 are"
                " reserved)"
            )
        return value

    return convert


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(?:(\d+)([smhd]))+|\d+")


def parse_duration(value: Any) -> int:
    """``30s``, ``5m``, ``1h``, ``1d``, ``1h30m`` or whole seconds (int) -> seconds.

    Raises ValueError with an operator-readable message.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"duration {value} is negative")
        return value
    if not isinstance(value, str) or not _DURATION_RE.fullmatch(value.strip().lower()):
        shown = repr(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"{shown} is not a duration (write 30s, 5m, 1h, 1d, 1h30m or seconds)")
    s = value.strip().lower()
    if s.isdigit():
        return int(s)
    return sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", s))


def duration(min_seconds: int = 0, max_seconds: int | None = None) -> Converter:
    def convert(value: Any, at: At) -> int:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise at.error(str(exc)) from None
        if seconds < min_seconds or max_seconds is not None and seconds > max_seconds:
            upper = f"{max_seconds}s" if max_seconds is not None else "unbounded"
            raise at.error(f"{value!r} ({seconds}s) is out of range {min_seconds}s..{upper}")
        return seconds

    return convert
