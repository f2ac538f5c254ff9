"""OmegaConf-style ``${path.to.key}`` interpolation on plain data, and nothing else.

OmegaConf resolvers are side channels: ``${oc.env:SECRET}`` reads the environment (and the
secret then lands in manifest.json), ``${oc.decode:...}``/``${oc.create:...}`` parse more input,
and custom resolvers run code. Only references to other keys of the same config are allowed:
absolute ``${a.b.0}`` / ``${a.b[0]}`` and relative ``${.x}`` / ``${..x}``. Anything else inside
``${...}`` is refused, naming the key that holds it; users who need resolvers resolve the YAML
first. Semantics follow OmegaConf: a value that is exactly one interpolation takes the referenced
value (any type); interpolations inside other text are replaced by ``str`` of the value; ``\\${``
is a literal ``${``. The result is built copy by copy under the shared ``Budget``, so a doubling
chain of interpolations fails at the budget in bounded time and memory, never after.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vqdeploy.errors import ConfigError
from vqdeploy.loading.config_tree import MAX_NESTING, Budget, Key, dotted

MAX_CHAIN = 64  # interpolations that point to interpolations (a -> b -> c ...)
_PATH = re.compile(r"^(\.*)((?:[A-Za-z0-9_\-]+|\[\d+\])(?:\.[A-Za-z0-9_\-]+|\[\d+\])*)?$")
_RESOLVER = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*:")

Loc = tuple[Key, ...]


@dataclass(frozen=True)
class Ref:
    text: str  # as written, e.g. "${.b}"
    up: int  # 0: absolute; n: relative, n dots
    keys: tuple[str, ...]


Part = str | Ref


class Resolver:
    """Resolves interpolations of one config tree; every value produced is counted in ``budget``."""

    def __init__(self, tree: Any, budget: Budget) -> None:
        self.tree = tree
        self.budget = budget
        self._parsed: dict[str, list[Part] | None] = {}
        self._active: list[Loc] = []  # string nodes being resolved (cycle detection)
        self._hops = 0  # nested ``locate`` calls (containers reached through interpolations)

    # --- public -----------------------------------------------------------------------------
    def resolve(self, loc: Loc = ()) -> Any:
        """The value at ``loc`` with every interpolation in it replaced."""
        return self._value(loc, 0)

    # --- parsing ------------------------------------------------------------------------------
    def parts(self, s: str, where: Loc) -> list[Part] | None:
        """``s`` split into literal text and references, or None when it has no interpolation."""
        if s not in self._parsed:
            self._parsed[s] = _parse(s, where) if "${" in s else None
        return self._parsed[s]

    # --- resolution ---------------------------------------------------------------------------
    def _raw(self, loc: Loc) -> Any:
        node = self.tree
        for k in loc:
            node = node[k]
        return node

    def _value(self, loc: Loc, depth: int, node: Any = None, known: bool = False) -> Any:
        if depth > MAX_NESTING:
            raise ConfigError(f"invalid config: '{dotted(loc)}': nested deeper than {MAX_NESTING} levels "
                              "after interpolation")
        if not known:
            node = self._raw(loc)
        if isinstance(node, dict):
            self.budget.add(1, sum(len(k) for k in node if isinstance(k, str)), loc)
            return {k: self._value((*loc, k), depth + 1, v, True) for k, v in node.items()}
        if isinstance(node, list):
            self.budget.add(1, 0, loc)
            return [self._value((*loc, i), depth + 1, v, True) for i, v in enumerate(node)]
        if isinstance(node, str):
            parts = self.parts(node, loc)
            if parts is not None:
                return self._interpolate(loc, parts, depth)
            self.budget.add(1, len(node), loc)
            return node
        self.budget.add(1, 0, loc)
        return node

    def _interpolate(self, loc: Loc, parts: list[Part], depth: int) -> Any:
        if loc in self._active:
            chain = " -> ".join(dotted(p) for p in self._active[self._active.index(loc):] + [loc])
            raise ConfigError(f"invalid config: interpolation cycle: {chain}")
        if len(self._active) >= MAX_CHAIN:
            raise ConfigError(f"invalid config: '{dotted(loc)}': more than {MAX_CHAIN} interpolations in a chain")
        self._active.append(loc)
        try:
            if len(parts) == 1 and isinstance(parts[0], Ref):
                return self._value(self.locate(loc, parts[0]), depth)
            pieces: list[str] = []
            for p in parts:
                if isinstance(p, str):
                    pieces.append(p)
                    continue
                value = self._value(self.locate(loc, p), depth)
                pieces.append(str(value))
                self.budget.add(0, len(pieces[-1]), loc)
            return "".join(pieces)
        finally:
            self._active.pop()

    def locate(self, loc: Loc, ref: Ref) -> Loc:
        """Where ``ref`` (written in the node at ``loc``) points, following interpolated containers."""
        if ref.up > len(loc):
            raise ConfigError(f"invalid config: '{dotted(loc)}': {ref.text} goes above the top of the config")
        self._hops += 1
        try:
            if self._hops > MAX_CHAIN:
                raise ConfigError(f"invalid config: '{dotted(loc)}': {ref.text}: more than {MAX_CHAIN} "
                                  "interpolations in a chain (a cycle?)")
            cur: Loc = loc[: len(loc) - ref.up] if ref.up else ()
            for key in ref.keys:
                node, redirects = self._raw(cur), 0
                while isinstance(node, str):  # a container reached through an interpolation
                    parts = self.parts(node, cur)
                    if not (parts and len(parts) == 1 and isinstance(parts[0], Ref)):
                        raise ConfigError(f"invalid config: '{dotted(loc)}': {ref.text}: '{dotted(cur)}' is a "
                                          "string, not a mapping or list")
                    redirects += 1
                    if redirects > MAX_CHAIN:
                        raise ConfigError(f"invalid config: '{dotted(loc)}': {ref.text}: more than {MAX_CHAIN} "
                                          "interpolations in a chain (a cycle?)")
                    cur = self.locate(cur, parts[0])
                    node = self._raw(cur)
                found = _child(node, key)
                if found is None:
                    raise ConfigError(f"invalid config: '{dotted(loc)}': {ref.text} points to a missing key "
                                      f"'{dotted((*cur, key))}'")
                cur = (*cur, found)
        finally:
            self._hops -= 1
        if self._raw(cur) == "???":
            raise ConfigError(f"invalid config: '{dotted(loc)}': {ref.text} points to a missing value (???)")
        return cur


def _child(node: Any, key: str) -> Key | None:
    if isinstance(node, dict):
        if key in node:
            return key
        if key.isdigit() and int(key) in node:
            return int(key)
        return None
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return int(key)
    return None


def _parse(s: str, where: Loc) -> list[Part]:
    """Split ``s`` at ``${...}``; refuse anything in braces that is not a plain key path."""
    parts: list[Part] = []
    text: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s.startswith("\\${", i):  # escaped: a literal "${"
            text.append("${")
            i += 3
            continue
        if s.startswith("\\\\${", i):  # an escaped backslash, then an interpolation
            text.append("\\")
            i += 2
            continue
        if not s.startswith("${", i):
            text.append(s[i])
            i += 1
            continue
        end = _closing_brace(s, i, where)
        body = s[i + 2 : end]
        ref = _ref(s[i : end + 1], body, where)
        if text:
            parts.append("".join(text))
            text = []
        parts.append(ref)
        i = end + 1
    if text:
        parts.append("".join(text))
    return parts


def _closing_brace(s: str, start: int, where: Loc) -> int:
    depth, i = 0, start + 2
    while i < len(s):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise ConfigError(f"invalid config: '{dotted(where)}': unterminated interpolation {_clip(s[start:])}")


def _ref(text: str, body: str, where: Loc) -> Ref:
    m = _PATH.match(body.strip())
    if m and (m.group(2) or m.group(1)):
        up = len(m.group(1))
        keys = tuple(k for k in re.split(r"[.\[\]]+", m.group(2) or "") if k)
        if up and not keys:
            raise ConfigError(f"invalid config: '{dotted(where)}': {_clip(text)} names no key")
        return Ref(text, up, keys)
    resolver = _RESOLVER.match(body)
    why = f"uses the resolver '{resolver.group(1)}'" if resolver else "is not a plain ${path.to.key} interpolation"
    raise ConfigError(f"invalid config: '{dotted(where)}': {_clip(text)} {why}; only interpolations of other keys "
                      "(${path.to.key}) are allowed: resolve the YAML first")


def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + "..."
