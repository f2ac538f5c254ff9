"""Finding and reading a taming run's model config (``<run>/configs/*-project.yaml``).

Configs are untrusted: each file is capped (``MAX_CONFIG_BYTES``), parsed as safe YAML into plain
data under a node/character budget, merged as upstream merges a resumed run's files, and only the
``model`` node is resolved, with plain ``${path.to.key}`` interpolation and no resolvers (see
``interpolation``): nothing from the environment or another file can enter a config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vqdeploy.errors import ConfigError
from vqdeploy.loading.config_tree import Budget, merge, plain, read_yaml
from vqdeploy.loading.interpolation import Resolver


def run_dir(checkpoint: Path) -> Path:
    """The run a ``<run>/checkpoints/<name>.ckpt`` path names, as the user named it: a ``last.ckpt``
    that is a symlink into another run still belongs to this run (no ``resolve()``)."""
    return Path(checkpoint).absolute().parent.parent


def find_run_configs(checkpoint: Path) -> list[Path]:
    """``<run>/configs/*-project.yaml`` for ``<run>/checkpoints/<name>.ckpt`` (sorted: a resumed
    run has several, and upstream merges them in timestamp order)."""
    return sorted((run_dir(checkpoint) / "configs").glob("*-project.yaml"))


def read_config(source: str | Path | Mapping[str, Any] | list[Path]) -> dict[str, Any]:
    """The ``model`` node (``{target, params}``) of a taming config, as plain containers."""
    return read_run_config(source)[0]


def read_run_config(source: str | Path | Mapping[str, Any] | list[Path]) -> tuple[dict[str, Any], Any]:
    """The ``model`` node and the ``data`` node (None where the config has none), both resolved:
    object-layout models take their token builder's parameters from the data sets' params."""
    budget = Budget()
    try:
        if isinstance(source, Mapping):
            data = plain(source, budget)
        else:
            paths = source if isinstance(source, list) else [Path(source)]
            data = None
            for p in paths:  # each opened without blocking and read only when regular (``read_yaml``)
                data = read_yaml(Path(p), budget) if data is None else merge(data, read_yaml(Path(p), budget))
        if not isinstance(data, dict):
            raise ConfigError("invalid config: expected a mapping with a 'model' key")
        loc: tuple[str, ...] = ("model",) if "model" in data else ()
        resolver = Resolver(data, budget)
        model = resolver.resolve(loc)
        data_node = None
        if loc and isinstance(data.get("data"), dict):
            try:  # only object-layout models read it: a broken data section must not stop the others
                data_node = resolver.resolve(("data",))
            except ConfigError:
                data_node = None
    except RecursionError:  # the limits above keep well inside the stack; this is a last line
        raise ConfigError("invalid config: nested too deeply") from None
    if loc == () and "target" not in model:
        model = None
    if not isinstance(model, dict) or "target" not in model:
        raise ConfigError("invalid config: no 'model.target' (is this a taming *-project.yaml?)")
    return model, data_node
