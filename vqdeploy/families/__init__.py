"""Model families: the PyTorch side of every codebase vqdeploy deploys, one ``Family`` each (``base``).

``FAMILIES`` by the manifest's ``model.family`` name; ``family_for`` picks the family that loads a
checkpoint; ``load_reference`` reloads the model an artifacts directory was exported from (checked by its
weights' fingerprint) for the torch backend, ``parity`` and ``bench``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqdeploy.errors import ArtifactError, ConfigError
from vqdeploy.families.base import Family, TorchStages
from vqdeploy.families.llamagen.family import LlamaGen
from vqdeploy.families.taming.family import Taming
from vqdeploy.loading.fingerprint import model_fingerprint

if TYPE_CHECKING:
    from torch import nn

    from vqdeploy.artifacts import Manifest

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family '{family.name}' registered twice")
    FAMILIES[family.name] = family
    return family


register(Taming())
register(LlamaGen())


def family_named(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ArtifactError(f"model family '{name}' is not known to this vqdeploy ({', '.join(FAMILIES)})") from None


def family_for(ckpt: str | Path, options: Mapping[str, Any] | None = None) -> Family:
    """The family that loads ``ckpt`` (families are asked in registration order, taming last: it is the default)."""
    options = options or {}
    for family in sorted(FAMILIES.values(), key=lambda f: f.name == "taming"):
        if family.claims(Path(ckpt), options):
            return family
    raise ConfigError(f"{ckpt}: no model family loads it ({', '.join(FAMILIES)})")


def load_reference(manifest: Manifest, ckpt: str | None = None, config: str | None = None) -> nn.Module:
    """The PyTorch model the artifacts were exported from (or ``ckpt``), checked by fingerprint."""
    family = family_named(manifest.model.family)
    path, cfg = ckpt, config
    if ckpt is None:
        path = manifest.checkpoint
        recorded = manifest.configs
        cfg = config or (recorded[0] if len(recorded) == 1 else None)
    if path is None:
        raise ArtifactError("the manifest records no checkpoint: pass --ckpt")
    model = family.load(path, cfg, **family.reload_options(manifest))
    if model_fingerprint(model) != manifest.fingerprint:
        raise ArtifactError(f"{path} holds different weights than the exported artifacts; re-export or pass the right --ckpt")
    return model


__all__ = ["FAMILIES", "Family", "TorchStages", "family_for", "family_named", "load_reference", "register"]
