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


def format_problem(file: str, line: int | None, key: str | None, message: str) -> str:
    """``FILE:LINE: key.path: message``, leaving out the parts that are None."""
    where = file if line is None else f"{file}:{line}"
    return f"{where}: {key}: {message}" if key else f"{where}: {message}"


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
        return format_problem(self.file, self.line, self.key, self.message)

    @property
    def all(self) -> list[ConfigError]:
        """Every problem this error stands for (one, or several for ``ConfigErrors``)."""
        return [self]


class ConfigErrors(ConfigError):
    """Several problems found in one pass over a file (``ipsecd check`` lists them all).

    Its ``file``/``line``/``key``/``message`` are the first problem's, so code that
    handles one ``ConfigError`` keeps working; ``str()`` is one problem per line.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.file, first.line, first.key, first.message)
        self.errors = errors

    @property
    def all(self) -> list[ConfigError]:
        return list(self.errors)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self.errors)


class ErrorCollector:
    """Gathers the ``ConfigError``s of independent checks, to raise them together.

    ``with errors.collecting(): ...`` runs one check and keeps its error (if any);
    ``raise_if_any()`` raises one ``ConfigError`` (or ``ConfigErrors`` for several).
    """

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def add(self, error: ConfigError) -> None:
        self.found.extend(error.all)

    def collecting(self) -> _Collecting:
        return _Collecting(self)

    def raise_if_any(self) -> None:
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            raise ConfigErrors(self.found)


class _Collecting:
    def __init__(self, collector: ErrorCollector) -> None:
        self.collector = collector

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, ConfigError):
            self.collector.add(exc)
            return True
        return False
