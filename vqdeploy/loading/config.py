"""Finding and reading a taming run's model config (``<run>/configs/*-project.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vqdeploy.errors import ConfigError


def find_run_configs(checkpoint: Path) -> list[Path]:
    """``<run>/configs/*-project.yaml`` for ``<run>/checkpoints/<name>.ckpt`` (sorted: a resumed
    run has several, and upstream merges them in timestamp order)."""
    run = checkpoint.resolve().parent.parent
    return sorted((run / "configs").glob("*-project.yaml"))


def read_config(source: str | Path | Mapping[str, Any] | list[Path]) -> dict[str, Any]:
    """The ``model`` node (``{target, params}``) of a taming config, as plain containers."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        if isinstance(source, Mapping):
            cfg = OmegaConf.create(dict(source))
        else:
            paths = source if isinstance(source, list) else [Path(source)]
            for p in paths:
                if not Path(p).is_file():
                    raise ConfigError(f"config not found: {p}")
            cfg = OmegaConf.merge(*[OmegaConf.load(p) for p in paths])
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config: {str(e).splitlines()[0]}") from None
    except yaml.YAMLError as e:  # the parser's message spans lines: fold it into one
        raise ConfigError(f"invalid config: not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read config: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("invalid config: expected a mapping with a 'model' key")
    model = data.get("model", data if "target" in data else None)
    if not isinstance(model, dict) or "target" not in model:
        raise ConfigError("invalid config: no 'model.target' (is this a taming *-project.yaml?)")
    return model
