"""docs/configuration.md against the config field tables (ipsecd/config/sections.py).

Every key of the code must be documented, every documented key must exist, each
documented default must be the code's default, each example must be accepted by
the key's converter, and a key with a fixed set of words must list them all.

The document's shape (what this test parses): one ``### KEY.PATH`` heading per key,
with ``[]`` after a list of sections (``### peers[].ike.rekey_time``), followed by
bullets ``- **type:** …``, ``- **default:** …``, ``- **allowed:** …`` and a fenced
```` ```yaml ```` example.  The default is one of:

- ``required``: the key must be written (``Field.default is REQUIRED``);
- ``unset …``: leaving the key out gives ``None`` in the tables, which ipsecd
  resolves later (the words after ``unset`` say how);
- a YAML value in backticks: converted with the key's own converter, it must
  equal the table's default (so ``30s`` documents a default of 30 seconds).

The key list comes from walking the tables from ``TOP`` through every nested
section, so a ``Field`` added anywhere fails here with its name until it is
documented.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipsecd.config import sections
from ipsecd.config.fields import REQUIRED, At, Field, Section
from ipsecd.config.yamltree import load_yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
DOC_NAME = "docs/configuration.md"


# -- the code's side: every key, by walking the tables ----------------------------------------


def _callables_inside(convert: Any, depth: int = 0) -> Iterator[Any]:
    """``convert`` and what it wraps: bound methods' objects and closure cells, recursively."""
    if depth > 6:
        return
    yield convert
    owner = getattr(convert, "__self__", None)
    if owner is not None:
        yield owner
    for cell in getattr(convert, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(value) or isinstance(value, Section):
            yield from _callables_inside(value, depth + 1)
        else:
            yield value


def nested_section(field: Field) -> Section | None:
    """The section a field's value is read with (``section(X)``, ``list_of(section(X))``)."""
    for thing in _callables_inside(field.convert):
        if isinstance(thing, Section):
            return thing
    return None


def fixed_words(field: Field) -> tuple[str, ...]:
    """The words a ``choice(...)`` converter accepts, wherever it sits in the converter."""
    for thing in _callables_inside(field.convert):
        try:
            nonlocals = inspect.getclosurevars(thing).nonlocals
        except TypeError:
            continue
        options = nonlocals.get("options")
        if isinstance(options, tuple) and all(isinstance(o, str) for o in options):
            return options
    return ()


def code_keys() -> dict[str, Field]:
    """``{"gateway.tun": Field, "peers.ike.rekey_time": Field, ...}`` (no ``[]``)."""
    keys: dict[str, Field] = {}

    def walk(section: Section, prefix: str) -> None:
        for field in section.fields:
            path = f"{prefix}{field.key}"
            keys[path] = field
            child = nested_section(field)
            if child is not None and child is not section:
                walk(child, path + ".")

    walk(sections.TOP, "")
    return keys


# -- the document's side ---------------------------------------------------------------------


HEADING = re.compile(r"^### ([A-Za-z0-9_.\[\]]+)\s*$", re.M)
BULLET = re.compile(r"^- \*\*(type|default|allowed):\*\* (.*(?:\n  .*)*)", re.M)
EXAMPLE = re.compile(r"^```yaml\n(.*?)^```", re.M | re.S)


def doc_entries() -> dict[str, dict[str, Any]]:
    """``{"peers.ike.rekey_time": {"heading": ..., "type": ..., "default": ..., ...}}``."""
    text = DOC.read_text(encoding="utf-8")
    entries: dict[str, dict[str, Any]] = {}
    headings = list(HEADING.finditer(text))
    for i, m in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        body = text[m.end() : end]
        # a "## " section heading also ends the entry
        cut = re.search(r"^## ", body, re.M)
        if cut:
            body = body[: cut.start()]
        heading = m[1]
        path = heading.replace("[]", "")
        assert path not in entries, f"{DOC_NAME}: {heading} is documented twice"
        entry: dict[str, Any] = {"heading": heading}
        for b in BULLET.finditer(body):
            entry[b[1]] = " ".join(b[2].split())
        example = EXAMPLE.search(body)
        entry["example"] = example[1] if example else None
        entries[path] = entry
    return entries


CODE = code_keys()
DOCS = doc_entries()


def test_every_key_in_the_code_is_documented() -> None:
    missing = sorted(set(CODE) - set(DOCS))
    assert not missing, (
        f"config keys missing from {DOC_NAME} (add a '### KEY' entry with type, default,"
        f" allowed values, meaning and a yaml example): {', '.join(missing)}"
    )


def test_every_documented_key_exists() -> None:
    extra = sorted(set(DOCS) - set(CODE))
    assert not extra, f"{DOC_NAME} documents keys the config tables do not have: {', '.join(extra)}"


def test_the_document_covers_enough_to_mean_something() -> None:
    # guards against a parser that silently finds nothing
    assert len(DOCS) >= 40 and "gateway.tun" in DOCS and "peers.esp.rekey_time" in DOCS


def _documented_default(path: str) -> str:
    entry = DOCS[path]
    default = entry.get("default")
    assert default, f"{DOC_NAME}: {entry['heading']} has no '- **default:** …' line"
    return str(default)


@pytest.mark.parametrize("path", sorted(set(CODE) & set(DOCS)))
def test_documented_default_is_the_code_default(path: str) -> None:
    field = CODE[path]
    heading = DOCS[path]["heading"]
    default = _documented_default(path)
    if default.startswith("required"):
        assert field.default is REQUIRED, (
            f"{DOC_NAME}: {heading} says required, but the code's default is {field.default!r}"
        )
        return
    assert field.default is not REQUIRED, (
        f"{DOC_NAME}: {heading} documents a default ({default}), but the key is required"
    )
    if default.startswith("unset"):
        assert field.default is None, (
            f"{DOC_NAME}: {heading} says unset, but the code's default is {field.default!r};"
            " document it as a value in backticks"
        )
        return
    m = re.match(r"`([^`]+)`", default)
    assert m, (
        f"{DOC_NAME}: {heading}: the default must be 'required', 'unset (…)' or a YAML value"
        f" in backticks; got {default!r}"
    )
    value = load_yaml(m[1], DOC_NAME)
    converted = None if value is None else field.convert(value, At(DOC_NAME, path, 0))
    assert converted == field.default, (
        f"{DOC_NAME}: {heading} documents default `{m[1]}` (= {converted!r}), but the code's"
        f" default is {field.default!r}"
    )


@pytest.mark.parametrize("path", sorted(set(CODE) & set(DOCS)))
def test_entry_has_type_allowed_and_a_valid_example(path: str) -> None:
    field = CODE[path]
    entry = DOCS[path]
    heading = entry["heading"]
    for part in ("type", "allowed"):
        assert entry.get(part), f"{DOC_NAME}: {heading} has no '- **{part}:** …' line"
    example = entry["example"]
    assert example, f"{DOC_NAME}: {heading} has no ```yaml example"
    tree = load_yaml(example, DOC_NAME)
    key = path.rsplit(".", 1)[-1]
    assert isinstance(tree, dict) and key in tree, (
        f"{DOC_NAME}: the example of {heading} must be a mapping with the key {key!r}"
    )
    field.convert(tree[key], At(DOC_NAME, path, 0))  # raises ConfigError if invalid


@pytest.mark.parametrize("path", sorted(p for p in set(CODE) & set(DOCS) if fixed_words(CODE[p])))
def test_every_allowed_word_is_listed(path: str) -> None:
    entry = DOCS[path]
    listed = set(re.findall(r"`([^`]+)`", entry.get("allowed", "")))
    missing = [w for w in fixed_words(CODE[path]) if w not in listed]
    assert not missing, f"{DOC_NAME}: {entry['heading']}: allowed values miss {missing}"


def test_the_walk_finds_nested_sections() -> None:
    # If a refactor hides nested sections from the walk, say so rather than pass vacuously.
    assert {"log.level", "gateway.listen", "peers.ike.proposals", "peers.manual.spi_in"} <= set(
        CODE
    )


# Files other branches add; a link to one of them is not broken on this branch.
WRITTEN_ELSEWHERE = {"docs/install.md"}


def test_relative_links_resolve() -> None:
    root = DOC.parents[1]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (doc.parent / target).resolve()
            if (
                resolved.is_relative_to(root)
                and str(resolved.relative_to(root)) in WRITTEN_ELSEWHERE
            ):
                continue
            assert resolved.exists(), f"{doc.relative_to(root)}: broken link {target}"


def test_each_section_index_lists_its_keys() -> None:
    """The ``Keys:`` line under each ``## `` heading links exactly the entries below it."""
    text = DOC.read_text(encoding="utf-8")
    for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
        entries = [h.rsplit(".", 1)[-1] for h in HEADING.findall(chunk)]
        if not entries:
            continue
        title = chunk.splitlines()[0]
        index = re.search(r"^Keys: (.*?)(?:\n\n|\Z)", chunk, re.M | re.S)
        assert index, f"{DOC_NAME}: section {title} has no 'Keys:' index"
        listed = re.findall(r"\[`([^`]+)`\]", index[1])
        assert listed == entries, (
            f"{DOC_NAME}: the 'Keys:' index of {title} lists {listed}, the entries are {entries}"
        )
