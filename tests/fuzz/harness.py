"""Run one fuzz target under atheris (libFuzzer, coverage-guided).

    PYTHONPATH=$PWD python -m tests.fuzz.harness TARGET [libFuzzer options] [CORPUS_DIR ...]

e.g. ``python -m tests.fuzz.harness esp -runs=100000 /tmp/new tests/fuzz/corpus/esp``
(libFuzzer writes new inputs to the first directory, so give it a scratch one).
``-max_len`` defaults to the target's.  An exception that escapes the target is a
crash: libFuzzer prints it and writes the input to ``-artifact_prefix``.
"""

from __future__ import annotations

import sys

import atheris


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        raise SystemExit(__doc__)
    name, options = argv[1], argv[2:]
    from tests.fuzz.targets import TARGETS  # only to read the module prefixes

    target = TARGETS[name]
    # Instrument the code under test: drop what was imported to read TARGETS, so the
    # import below loads (and atheris instruments) it again.
    fresh = ("ipsecd", "tests.fuzz", *target.instrument)
    for module in [m for m in sys.modules if m.startswith(fresh) and m != __name__]:
        del sys.modules[module]
    with atheris.instrument_imports(include=list(target.instrument)):
        from tests.fuzz.targets import TARGETS as INSTRUMENTED
    if not any(o.startswith("-max_len=") for o in options):
        options.append(f"-max_len={target.max_len}")
    atheris.Setup([argv[0], *options], INSTRUMENTED[name].run)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
