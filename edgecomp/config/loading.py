"""Reading a config: the bounded YAML parser, ``--set`` overrides, ``load`` and ``from_dict``.

``parse_yaml`` is ``yaml.safe_load`` with bounds (size, aliases, expanded values,
depth, duplicate keys), so a YAML bomb or a huge file is refused before any of it
is built.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgecomp.config.messages import _kind, _short, _short_text, format_validation_error
from edgecomp.config.run import Config
from edgecomp.errors import ConfigError


def load(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML config, applies ``key.path=value`` overrides, validates it.

    Args:
        path: the YAML file.
        overrides: ``"a.b=value"`` strings; values are parsed as YAML, list items
            are addressed by index (``stages.0.prune.sparsity=0.5``).

    Returns:
        The frozen, validated ``Config``.

    Raises:
        ConfigError: one line naming the file or key, the value and what is allowed.
    """
    raw = read_yaml(path)
    for override in overrides:
        apply_override(raw, override)
    return from_dict(raw, source=str(path))


def read_yaml(path: str | Path) -> dict:
    """The top-level map of a YAML config file (safe YAML, bounded), not yet validated.

    Raises:
        ConfigError: the file is missing, unreadable, larger than ``MAX_CONFIG_BYTES``,
            not YAML, a YAML bomb or otherwise refused by ``parse_yaml``, empty or not a map.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file to --config")
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory; pass a YAML file to --config")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file is (/dev/zero too)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: the config file is larger than {MAX_CONFIG_BYTES // 1024} KiB, the limit "
                              "for a config (they take a few KiB); is this the right file?")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {_short_text(str(error), 200)}") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty; start from configs/quickstart.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a map of keys (name, data, model, ...), got a {_kind(raw)}")
    return raw


# What a config may hold. Real configs have a few dozen values, a handful of levels,
# rarely an alias; the bounds stop "billion laughs" alias bombs (a few hundred bytes
# that expand to 10⁹ values), deep nesting and huge files before any of it is built,
# rendered or validated.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_ALIASES = 100
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


class _Refused(Exception):
    """A YAML document the bounded loader refuses; the message says why (and where)."""


class _BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """``yaml.safe_load``'s loader (libyaml when available) that also refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" then keys that override it: YAML's merge, not a duplicate
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise _Refused(f"duplicate key {_short(key)} at line {line} (first at line {first}); "
                                   "each key may appear once in a map")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_yaml_graph(root: yaml.Node) -> None:
    """Refuses a composed YAML graph whose aliases would expand too far, without expanding it.

    Walks the node graph once, iteratively, in document order: a node reached again
    is an alias and counts the expanded size of its anchor (memoized when the anchor
    was finished), an alias inside its own anchor is a cycle. The running count of
    expanded values stops the walk as soon as it passes ``MAX_YAML_VALUES``.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
    open_nodes: set[int] = set()
    aliases = total = 0
    stack: list = [(root, None)]
    while stack:
        node, children = stack.pop()
        key = id(node)
        if children is not None:  # all children done: memoize this node's size and height
            open_nodes.discard(key)
            height = 1 + max((sizes[id(child)][1] for child in children), default=0)
            if height > MAX_YAML_DEPTH:
                raise _Refused(f"the YAML at line {node.start_mark.line + 1} nests more than {MAX_YAML_DEPTH} "
                               "levels deep" + (" once its aliases (*name) are expanded" if aliases else ""))
            sizes[key] = (1 + sum(sizes[id(child)][0] for child in children), height)
            continue
        if key in sizes:
            aliases += 1
            total += sizes[key][0]
            if aliases > MAX_YAML_ALIASES:
                raise _Refused(f"more than {MAX_YAML_ALIASES} YAML aliases (*name), the {aliases}th at line "
                               f"{node.start_mark.line + 1}; a config needs few, if any: write the values out")
        elif key in open_nodes:
            raise _Refused(f"the YAML alias at line {node.start_mark.line + 1} refers to a node that contains it "
                           "(a cycle)")
        else:
            total += 1
            if isinstance(node, yaml.ScalarNode):
                sizes[key] = (1, 1)
            else:
                children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) \
                    else node.value
                open_nodes.add(key)
                stack.append((node, children))
                stack.extend((child, None) for child in reversed(children))
        if total > MAX_YAML_VALUES:
            raise _Refused(f"the YAML expands to more than {MAX_YAML_VALUES} values"
                           + (f" through its aliases (*name), a YAML alias bomb (the {aliases}th at line "
                              f"{node.start_mark.line + 1})" if aliases else "")
                           + "; a config needs far fewer")


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` with bounds: size, aliases, expanded values, depth, duplicate keys.

    Args:
        text: the YAML document.
        source: what to call it in errors: the file path, or ``--set key``.

    Raises:
        ConfigError: one line naming ``source``: a syntax error (with its line), or what
            was refused and the limit.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: the YAML is longer than {MAX_CONFIG_BYTES // 1024} KiB, the limit for a config")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node)
        return loader.construct_document(node)
    except _Refused as refused:
        raise ConfigError(f"{source}: {refused}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{source}: YAML syntax error{where}: {_short_text(problem, 200)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML nests more than {MAX_YAML_DEPTH} levels deep") from None
    except (ValueError, OverflowError) as error:  # e.g. an integer of 5,000 digits, a 30 February
        raise ConfigError(f"{source}: a YAML value cannot be read: {_short_text(str(error), 200)}") from None
    finally:
        loader.dispose()


def from_dict(raw: dict, source: str = "config") -> Config:
    """Validates a plain dict (as read from YAML) into a ``Config``."""
    if isinstance(raw, dict) and "base" in raw and "data" not in raw:
        tool = "search" if "search" in raw else "study"
        raise ConfigError(f"{source}: this is a {tool} file (it has base:), not a run config; run it with "
                          f"python -m edgecomp.{tool} --config {source}")
    try:
        return Config.model_validate(raw)
    except ValidationError as error:        # not a map at all: pydantic refuses it before Config.__init__
        raise ConfigError(f"{source}: {format_validation_error(error)}") from None
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def apply_override(raw: dict, override: str) -> None:
    """Applies one ``dotted.key=value`` override to the raw config dict in place."""
    if "=" not in override:
        raise ConfigError(f"--set {_short(override)}: expected key=value, e.g. --set train.epochs=3")
    key, _, text = override.partition("=")
    key = key.strip().replace("[", ".").replace("]", "")
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise ConfigError(f"--set {_short(override)}: the key is empty")
    if len(key) > 200:
        raise ConfigError(f"--set {_short(key)}: the key is longer than 200 characters")
    value = parse_yaml(text, f"--set {key}") if text.strip() else None
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"--set {key}: {where!r} must be a list index below {len(node)}, got {_short(part)}"
                )
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])!r} is a {_kind(node)}, not a map or list")
