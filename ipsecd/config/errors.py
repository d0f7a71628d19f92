"""The one error the config layer raises.

Every problem with a config file (YAML syntax, unknown key, wrong type, bad
value, inconsistent peers, unreadable secret file) becomes a ``ConfigError``
that says where it is and what is wrong, in the form editors and CI logs
understand::

    etc/ipsecd.yaml:14: peers[0].remote_ts[1]: '10.2.0.0/33' is not an IPv4/IPv6 prefix

Messages never contain secret material (PSKs, manual keys); they may quote
values written in the YAML file itself, which holds no secrets.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A config file problem at ``file:line`` under the key path ``key``.

    ``line`` is None when the problem concerns the file as a whole (it cannot
    be read); ``key`` is None for problems not tied to one key (YAML syntax,
    an empty file).  ``str()`` leaves the missing parts out.
    """

    def __init__(self, file: str, line: int | None, key: str | None, message: str) -> None:
        super().__init__(file, line, key, message)
        self.file = file
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
