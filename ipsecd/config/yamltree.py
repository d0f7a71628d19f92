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

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: dict[str, int] = {}
        self.duplicates: list[tuple[str, int]] = []  # (key, line of the repeated key)


class LineList(list[Any]):
    """A YAML sequence: ``lines[i]`` is the 1-based line of item ``i``."""

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


class LineLoader(yaml.SafeLoader):
    """SafeLoader (YAML 1.1 scalars: ints, hex ints, booleans) with line-aware containers."""


class StringLineLoader(yaml.BaseLoader):
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
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, None, f"YAML error: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


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
