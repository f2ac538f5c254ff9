"""``load_model``: a taming checkpoint (+ config) -> a vqdeploy model in eval mode.

The config's numbers are checked against the size budgets first, the module tree is built on the
``meta`` device (no memory), and the checkpoint's model tensors, read once into private memory
(training-only ``loss.*`` weights are never read), are assigned into it: the weights exist once,
never as two copies.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqdeploy.errors import CheckpointError, ConfigError, shown
from vqdeploy.loading.checkpoint import check_format, read_state_dict
from vqdeploy.loading.config import find_run_configs, read_run_config
from vqdeploy.loading.targets import BuildContext, build_module

# training-only weights (discriminator, LPIPS) that taming checkpoints carry
_IGNORED = re.compile(r"(^|\.)loss\.")


@dataclass(frozen=True)
class ModelSource:
    """Where a loaded model came from (recorded in export manifests)."""

    checkpoint: str  # as the user named it (absolute, symlinks kept: the run it names is this one)
    config: list[str] | None
    target: str
    config_data: dict[str, Any]
    checkpoint_target: str | None = None  # the file a symlinked checkpoint points to


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means ``<run>/checkpoints/last.ckpt``."""
    p = Path(path)
    if os.path.isdir(p) and os.path.isfile(p / "checkpoints" / "last.ckpt"):  # os.path: a name too long is False
        return p / "checkpoints" / "last.ckpt"
    return p


def _resolve_config(ckpt: Path, config: str | Path | Mapping[str, Any] | None) \
        -> tuple[tuple[dict[str, Any], Any], list[str] | None]:
    """((model node, data node), the config files read)."""
    if config is not None:
        if isinstance(config, Mapping):
            return read_run_config(config), None
        return read_run_config(Path(config)), [str(Path(config).resolve())]
    found = find_run_configs(ckpt)
    if not found:
        raise ConfigError(
            f"no config for {ckpt}: expected <run>/configs/*-project.yaml beside <run>/checkpoints/, "
            "or pass one explicitly (--config)"
        )
    return read_run_config(found), [str(p) for p in found]


def _assign(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict(keep_vars=True)
    provided = {k: v for k, v in state_dict.items() if not _IGNORED.search(k)}
    # a tensor the builder already filled from side data (the remap ``used`` table read from
    # used.npy when the checkpoint predates the remap, as upstream's strict=False load allows)
    provided.update({k: v for k, v in expected.items() if k not in provided and not v.is_meta})
    missing = [k for k in expected if k not in provided]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: checkpoint does not match the config: missing weight '{missing[0]}'{more}")
    unexpected = [k for k in provided if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where}: checkpoint does not match the config: unexpected weight '{unexpected[0]}'{more}")
    for k, ref in expected.items():
        got = provided[k]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: checkpoint does not match the config: '{k}' has shape {tuple(got.shape)}, "
                f"config expects {tuple(ref.shape)}"
            )
        if got.dtype.is_floating_point != ref.dtype.is_floating_point:
            raise CheckpointError(f"{where}: '{k}' has dtype {got.dtype}, expected {ref.dtype}")
    model.load_state_dict({k: provided[k] for k in expected}, strict=True, assign=True)


def load_model(
    path: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    object_classes: int | None = None,
) -> nn.Module:
    """Load a taming model (Net2NetTransformer, VQModel, GumbelVQ, ...) in eval mode.

    ``path`` is a Lightning ``last.ckpt`` (config found in ``<run>/configs/*-project.yaml``), a
    run directory, a plain state_dict file or a ``.safetensors`` file; ``config`` overrides the
    lookup. ``object_classes`` is the number of object categories of an object-layout model whose
    data config does not state it (``--object-classes``). The model carries ``model.source`` (a ``ModelSource``).
    """
    ckpt = resolve_checkpoint(path)
    if os.path.isdir(ckpt):
        raise CheckpointError(f"not a checkpoint file or run directory (no checkpoints/last.ckpt): {shown(ckpt)}")
    check_format(ckpt)  # not found, a FIFO, a device ...: one line, without blocking
    (node, data), config_paths = _resolve_config(ckpt, config)
    state_dict = read_state_dict(ckpt, skip=_IGNORED.search)
    with torch.device("meta"):
        model = build_module(node, BuildContext(state_dict, data=data, object_classes=object_classes))
    _assign(model, state_dict, str(ckpt))
    model.eval().requires_grad_(False)
    if torch.device(device).type != "cpu":
        model.to(device)
    named, target = ckpt.absolute(), ckpt.resolve()
    model.source = ModelSource(  # type: ignore[assignment]
        str(named), config_paths, str(node["target"]), node, str(target) if target != named else None)
    return model
