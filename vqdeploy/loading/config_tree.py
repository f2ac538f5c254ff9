"""A config file as plain, bounded data: YAML parsed without code, aliases counted, files merged.

A config is untrusted input. PyYAML's safe loader runs no code, but a 2 KB file of aliases
(``&a [*b, *b]`` ten times over) stands for billions of nodes once copied, a recursive alias is a
cycle, and a deeply nested flow sequence exhausts the stack. Every tree here is therefore copied
into fresh ``dict``/``list``/scalars under a ``Budget`` (nodes and characters, each alias counted
where it is used) and a nesting limit, and the same budget continues through interpolation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vqdeploy.errors import ConfigError, shown
from vqdeploy.files import read_regular

MAX_CONFIG_BYTES = 1 << 20  # per YAML file; a taming *-project.yaml is ~2-5 KB
MAX_NODES = 1_000_000  # containers + scalars of a config, after alias expansion and interpolation
MAX_CHARS = 16 << 20  # characters of all keys and strings, idem
MAX_NESTING = 64  # containers inside containers (taming nests ~8 deep)
MISSING = "???"  # OmegaConf's mandatory-missing marker: merging it keeps the earlier value

Key = str | int
Scalar = (str, int, float, bool, type(None))


class Budget:
    """Running totals of nodes and characters, checked at every step (fails fast, bounded memory)."""

    def __init__(self, max_nodes: int = MAX_NODES, max_chars: int = MAX_CHARS) -> None:
        self.max_nodes, self.max_chars = max_nodes, max_chars
        self.nodes = self.chars = 0

    def add(self, nodes: int = 1, chars: int = 0, loc: tuple[Key, ...] = ()) -> None:
        self.nodes += nodes
        self.chars += chars
        if self.nodes > self.max_nodes:
            raise ConfigError(f"invalid config: more than {self.max_nodes} values (at '{dotted(loc)}', "
                              "after expanding aliases and interpolations)")
        if self.chars > self.max_chars:
            raise ConfigError(f"invalid config: more than {self.max_chars} characters of text (at '{dotted(loc)}', "
                              "after expanding aliases and interpolations)")


def dotted(path: tuple[Key, ...]) -> str:
    return ".".join(str(k) for k in path) or "<root>"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML with OmegaConf's scalar rules: ``1e-6`` is a float, dates stay strings, no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                            f"found duplicate key {key_node.value}",
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?[0-9][0-9_]*(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in _Loader.yaml_implicit_resolvers.items()
}


class _TooLarge(ConfigError):
    pass


def read_yaml(path: Path, budget: Budget) -> Any:
    """One YAML file (at most ``MAX_CONFIG_BYTES``) as plain data."""
    try:  # without blocking (a FIFO fails at once), a regular file only: one line naming what it is otherwise
        text = read_regular(path, "config", MAX_CONFIG_BYTES, ConfigError, _TooLarge)
    except _TooLarge:
        raise ConfigError(f"config {shown(path)} is larger than {MAX_CONFIG_BYTES} bytes; a model config is a few "
                          "KB") from None
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as e:  # the parser's message spans lines: fold it into one
        raise ConfigError(f"invalid config: not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except (ValueError, OverflowError, RecursionError) as e:  # e.g. an int of more than 4300 digits
        raise ConfigError(f"invalid config {path}: {type(e).__name__}: {str(e)[:200]}") from None
    return plain(doc, budget)


def plain(obj: Any, budget: Budget, path: tuple[Key, ...] = ()) -> Any:
    """A fresh copy made of dict/list/str/int/float/bool/None (keys str or int), counted in ``budget``."""
    if len(path) > MAX_NESTING:
        raise ConfigError(f"invalid config: nested deeper than {MAX_NESTING} levels at '{dotted(path[:8])}...'")
    if isinstance(obj, Mapping):
        if type(obj).__module__.startswith("omegaconf"):  # never let a DictConfig resolve itself
            from omegaconf import OmegaConf

            obj = OmegaConf.to_container(obj, resolve=False)
        budget.add(1, 0, path)
        out: dict[Key, Any] = {}
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise ConfigError(f"invalid config: key {k!r} at '{dotted(path)}' is not a string or integer")
            budget.add(0, len(k) if isinstance(k, str) else 0, path)
            out[k] = plain(v, budget, (*path, k))
        return out
    if isinstance(obj, (list, tuple)):
        budget.add(1, 0, path)
        return [plain(v, budget, (*path, i)) for i, v in enumerate(obj)]
    if isinstance(obj, Scalar):
        budget.add(1, len(obj) if isinstance(obj, str) else 0, path)
        return obj
    raise ConfigError(f"invalid config: '{dotted(path)}' holds a {type(obj).__name__}, "
                      "expected a mapping, list, string, number, boolean or null")


def merge(base: Any, update: Any) -> Any:
    """OmegaConf.merge on plain data: mappings merge recursively, the later value wins, lists are
    replaced, and a later ``???`` keeps the earlier value. Inputs come from ``plain`` (already counted)."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            if v == MISSING and k in out:
                continue
            out[k] = merge(out[k], v) if k in out else v
        return out
    return update
