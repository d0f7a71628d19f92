"""YAML -> plain dicts and lists that remember the line of every key and item.

PyYAML's constructors drop positions; these subclasses record
``node.start_mark.line + 1`` for each mapping key and sequence item so that
validation can report ``file:line``.  Duplicate keys, which plain PyYAML
silently collapses to the last one, are kept aside for the validator to refuse.
"""

from __future__ import annotations

from typing import Any

import yaml

from ipsecd.config.errors import ConfigError


class LineMap(dict[str, Any]):
    """A YAML mapping: ``lines[key]`` is the 1-based line of the key."""

    # No instance __dict__: a 1000-peer config has 8000 of these at once while it is
    # validated, and the arenas that peak needs stay with the daemon after it (issue 17).
    __slots__ = ("line", "lines", "duplicates")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: dict[str, int] = {}
        self.duplicates: list[tuple[str, int]] = []  # (key, line of the repeated key)


class LineList(list[Any]):
    """A YAML sequence: ``lines[i]`` is the 1-based line of item ``i``."""

    __slots__ = ("line", "lines")  # as LineMap's

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _key_text(key_node: yaml.Node) -> str:
    if not isinstance(key_node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(
            None, None, "a mapping key must be a plain name", key_node.start_mark
        )
    return str(key_node.value)  # the text as written: `yes:` stays "yes", `1:` stays "1"


def _construct_mapping(loader: yaml.BaseLoader, node: yaml.MappingNode) -> LineMap:
    result = LineMap(_line(node))
    sources: list[LineMap] = []
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` (SafeLoader only)
            nodes = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in nodes:
                if not isinstance(source, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        "<< must merge a mapping or a list of mappings",
                        source.start_mark,
                    )
                sources.append(loader.construct_object(source, deep=True))
            continue
        key = _key_text(key_node)
        if key in result:
            result.duplicates.append((key, _line(key_node)))
            continue
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = _line(key_node)
    # YAML merge keys: the mapping's own keys win, then earlier merge sources over later ones.
    # Overriding a merged key is the point of merging, not a duplicate.
    for source in sources:
        for key, value in source.items():
            if key not in result:
                result[key] = value
                result.lines[key] = source.lines[key]
    return result


def _construct_sequence(loader: yaml.BaseLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(_line(node))
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.lines.append(_line(item))
    return result


# libyaml's parser where PyYAML was built with it: the pure-Python scanner and parser take
# 3 of the 4 seconds that a 1000-peer config needs to load, and most of its peak memory.
# The constructors (ours, below) and the marks they read are the same with either parser.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseLoader: type[yaml.BaseLoader] = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


class LineLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader (YAML 1.1 scalars: ints, hex ints, booleans) with line-aware containers."""


class StringLineLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Every scalar stays a string: for key files, where ``0123`` must not become an int."""


for _loader in (LineLoader, StringLineLoader):
    _loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
    _loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
    _loader.add_constructor("tag:yaml.org,2002:omap", _construct_sequence)


def load_yaml(text: str, file: str, *, strings_only: bool = False) -> Any:
    """Parse one YAML document; None for an empty one.

    A syntax error becomes ``ConfigError(file, line, None, ...)``; its message
    quotes YAML's problem description but never the offending source line.
    """
    loader_class = StringLineLoader if strings_only else LineLoader
    loader: LineLoader | StringLineLoader | None = None
    try:
        loader = loader_class(text)  # the reader refuses control characters right here
        try:
            return _from_events(loader)
        except _Unusual:
            loader.dispose()
            loader = loader_class(text)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = f" (column {mark.column + 1})" if mark else ""
        problem = exc.problem or "invalid YAML"
        context = f" {exc.context}" if exc.context else ""
        raise ConfigError(
            file, line, None, f"YAML syntax error: {problem}{context}{column}"
        ) from None
    except yaml.reader.ReaderError as exc:  # a control character or invalid code point
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        code = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        raise ConfigError(file, line, None, f"character {code} is not allowed in YAML") from None
    except UnicodeEncodeError as exc:  # libyaml's reader takes UTF-8: a lone surrogate
        line = text.count("\n", 0, exc.start) + 1
        code = f"#x{ord(text[exc.start]):04x}"
        raise ConfigError(file, line, None, f"character {code} is not allowed in YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, None, f"YAML error: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


class _Unusual(Exception):
    """The document uses what :func:`_from_events` leaves to PyYAML's composer."""


def _from_events(loader: Any) -> Any:  # a LineLoader or StringLineLoader (untyped stubs)
    """The tree that ``loader.get_single_data()`` gives, built from the parser's events.

    PyYAML's composer first builds a node (with its marks) for every scalar and
    collection of the document, then constructs the objects: for a 1000-peer config that
    is 18 MB of nodes at once, freed right after but leaving the daemon's heap in pieces
    (23 MB more resident memory for 5 MB of config).  Built event by event, only the
    objects that stay are allocated.  Anchors, aliases, merge keys, explicit tags, keys
    that are not scalars and more than one document raise :class:`_Unusual`: the caller
    then parses the text again the usual way, so those keep PyYAML's exact behaviour.
    """
    events = loader  # its parser half: check_event, get_event
    events.get_event()  # StreamStart
    if events.check_event(yaml.StreamEndEvent):
        return None
    events.get_event()  # DocumentStart
    stack: list[tuple[LineMap | LineList, str | None, int]] = []  # container, key, key line
    root: Any = None
    while True:
        event = events.get_event()
        if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            value: Any = stack.pop()[0]
            line = value.line
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None or event.tag is not None:
                raise _Unusual
            mark: Any = event.start_mark  # the parser always sets it
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            value = loader.construct_object(yaml.ScalarNode(tag, event.value, mark, mark))
            loader.constructed_objects.clear()
            line = mark.line + 1
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if event.anchor is not None or event.tag is not None:
                raise _Unusual
            start: Any = event.start_mark
            line = start.line + 1
            if isinstance(event, yaml.MappingStartEvent):
                stack.append((LineMap(line), None, 0))
            else:
                stack.append((LineList(line), None, 0))
            continue
        else:  # an alias
            raise _Unusual
        if not stack:
            root = value
            break
        container, key, key_line = stack[-1]
        if isinstance(container, LineList):
            container.append(value)
            container.lines.append(line)
        elif key is None:  # value is a key
            if not isinstance(event, yaml.ScalarEvent) or event.value == "<<":
                raise _Unusual
            stack[-1] = (container, str(event.value), line)
        else:
            if key in container:
                container.duplicates.append((key, key_line))
            else:
                container[key] = value
                container.lines[key] = key_line
            stack[-1] = (container, None, 0)
    events.get_event()  # DocumentEnd
    if not events.check_event(yaml.StreamEndEvent):
        raise _Unusual  # PyYAML's composer says "expected a single document"
    return root


def key_lines(tree: Any, path: str = "") -> dict[str, int]:
    """Every key path of a loaded tree (``peers[0].local_ts[1]``) -> its line.

    So that what is found after loading (``ipsecd.config.warnings``) can still say
    FILE:LINE, as a ``ConfigError`` does.
    """
    found: dict[str, int] = {}
    if isinstance(tree, LineMap):
        for key, value in tree.items():
            sub = f"{path}.{key}" if path else key
            found[sub] = tree.lines.get(key, tree.line)
            found.update(key_lines(value, sub))
    elif isinstance(tree, LineList):
        for i, value in enumerate(tree):
            sub = f"{path}[{i}]"
            found[sub] = tree.lines[i] if i < len(tree.lines) else tree.line
            found.update(key_lines(value, sub))
    return found
