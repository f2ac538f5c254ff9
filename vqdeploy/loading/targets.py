"""Upstream ``target:`` strings -> vqdeploy builders.

Each builder gets the node's ``params`` and a ``BuildContext`` (the checkpoint's state_dict and
the key prefix of the module being built), so that data upstream reads from side files (the
``remap`` used-codes table) can come from the checkpoint itself. Every node's numbers are checked
against the size budgets of ``sizes`` before its module is built.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vqdeploy.conditions.objects import ObjectLayout
from vqdeploy.errors import ConfigError, shown
from vqdeploy.files import read_regular
from vqdeploy.loading.sizes import MAX_VOCAB, check_params, check_sequence
from vqdeploy.models import conditioning, mingpt, net2net, permuter, vqgan


@dataclass(frozen=True)
class BuildContext:
    state_dict: Mapping[str, torch.Tensor]
    prefix: str = ""
    data: Any = None  # the run config's ``data:`` node (object-layout builders read it)
    object_classes: int | None = None  # --object-classes, where the data config does not say

    def child(self, name: str) -> BuildContext:
        return BuildContext(self.state_dict, f"{self.prefix}{name}.", self.data, self.object_classes)


Builder = Callable[[dict[str, Any], BuildContext], nn.Module]

# upstream keys of a VQModel's params that only matter for training
_VQ_TRAINING_ONLY = ("lossconfig", "ckpt_path", "ignore_keys", "monitor", "temperature_scheduler_config")


def _used_codes(params: dict[str, Any], ctx: BuildContext) -> torch.Tensor | None:
    remap = params.pop("remap", None)
    if remap is None:
        return None
    key = f"{ctx.prefix}quantize.used"
    if key in ctx.state_dict:  # upstream registers ``used`` as a buffer: the checkpoint has it
        return ctx.state_dict[key].clone()
    n_embed = params.get("n_embed", MAX_VOCAB)
    limit = 8 * n_embed + 65536  # at most n_embed int64 codes and a header

    class TooLarge(ConfigError):
        pass

    if not isinstance(remap, str) or not remap or "\0" in remap:
        raise ConfigError(f"remap: expected the path of a .npy table, got {str(remap)[:80]!r}")
    if not os.path.lexists(remap):
        raise ConfigError(f"remap table {shown(remap)} not found and the checkpoint has no {key}")
    try:  # without blocking, a regular file only, bounded
        data = read_regular(Path(remap), "remap table", limit, ConfigError, TooLarge)
    except TooLarge:
        raise ConfigError(f"remap table {shown(remap)} is larger than a table of n_embed = {n_embed} codes") from None
    try:
        table = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"remap table {remap}: not a .npy array ({e})") from None
    if not isinstance(table, np.ndarray) or table.ndim != 1 or table.dtype.kind not in "iu" \
            or not 1 <= table.shape[0] <= n_embed:
        raise ConfigError(f"remap table {remap}: expected a 1-D integer array of at most n_embed = {n_embed} codes")
    used = np.array(table, dtype=np.int64)
    if used.min() < 0 or used.max() >= n_embed:
        raise ConfigError(f"remap table {remap}: code ids must be in 0..{n_embed - 1}")
    return torch.from_numpy(used)


def _vq(cls: type[vqgan.VQModel]) -> Builder:
    def build(params: dict[str, Any], ctx: BuildContext) -> nn.Module:
        params = dict(params)
        for k in _VQ_TRAINING_ONLY:
            params.pop(k, None)
        used = _used_codes(params, ctx)
        return cls(remap=used, **params)

    return build


def _permuter(cls: type[permuter.AbstractPermuter]) -> Builder:
    def build(params: dict[str, Any], ctx: BuildContext) -> nn.Module:
        try:
            return cls(**params)
        except ValueError as e:  # the grid checks of ``permuter.check_grid``
            raise ConfigError(f"invalid config: {e}") from None

    return build


def _net2net(params: dict[str, Any], ctx: BuildContext) -> nn.Module:
    check_sequence(params, "taming.models.cond_transformer.Net2NetTransformer")
    params = dict(params)
    for k in ("ckpt_path", "ignore_keys"):
        params.pop(k, None)
    first = build_module(_required(params, "first_stage_config", "Net2NetTransformer"), ctx.child("first_stage_model"))
    cond_cfg = _required(params, "cond_stage_config", "Net2NetTransformer")
    unconditional = bool(params.get("unconditional", False))
    cond: nn.Module
    if cond_cfg == "__is_first_stage__":
        cond = first
    elif cond_cfg == "__is_unconditional__" or unconditional:
        cond = conditioning.SOSProvider(int(params.get("sos_token", 0)))
    else:
        cond = build_module(cond_cfg, ctx.child("cond_stage_model"))
    perm_cfg = params.pop("permuter_config", None) or {"target": "taming.modules.transformer.permuter.Identity"}
    perm = build_module(perm_cfg, ctx.child("permuter"))
    gpt = build_module(_required(params, "transformer_config", "Net2NetTransformer"), ctx.child("transformer"))
    return net2net.Net2NetTransformer(gpt, first, cond, perm, **params)  # type: ignore[arg-type]


def _dummy_cond(params: dict[str, Any], ctx: BuildContext) -> nn.Module:
    key = params.pop("conditional_key", None)
    if params:
        raise ConfigError(f"invalid params for DummyCondStage: unexpected '{sorted(params)[0]}'")
    return conditioning.DummyCondStage(ObjectLayout.from_config(key, ctx.data, ctx.object_classes))


def _required(params: dict[str, Any], key: str, owner: str) -> Any:
    if key not in params:
        raise ConfigError(f"config of {owner} misses '{key}'")
    return params.pop(key)


_P = "taming.modules.transformer.permuter."
TARGETS: dict[str, Builder] = {
    "taming.models.cond_transformer.Net2NetTransformer": _net2net,
    "taming.models.vqgan.VQModel": _vq(vqgan.VQModel),
    "taming.models.vqgan.VQNoDiscModel": _vq(vqgan.VQModel),
    "taming.models.vqgan.VQSegmentationModel": _vq(vqgan.VQSegmentationModel),
    "taming.models.vqgan.GumbelVQ": _vq(vqgan.GumbelVQ),
    "taming.modules.transformer.mingpt.GPT": lambda p, c: mingpt.GPT(**p),
    "taming.modules.util.SOSProvider": lambda p, c: conditioning.SOSProvider(**p),
    "taming.modules.util.Labelator": lambda p, c: conditioning.Labelator(**p),
    "taming.modules.misc.coord.CoordStage": lambda p, c: conditioning.CoordStage(**p),
    "taming.models.dummy_cond_stage.DummyCondStage": _dummy_cond,
    **{_P + name: _permuter(getattr(permuter, name)) for name in (
        "Identity", "Subsample", "ZCurve", "SpiralOut", "SpiralIn", "Random", "AlternateParsing")},
}


def build_module(node: Any, ctx: BuildContext) -> nn.Module:
    if not isinstance(node, Mapping) or "target" not in node:
        raise ConfigError(f"invalid config node at '{ctx.prefix or 'model'}': expected {{target, params}}")
    target = node["target"]
    builder = TARGETS.get(target) if isinstance(target, str) else None
    if builder is None:
        shown = f"'{target}'" if isinstance(target, str) and target.isprintable() and len(target) <= 200 else \
            repr(target)[:200]
        raise ConfigError(f"unknown target {shown} (supported: {', '.join(sorted(TARGETS))})")
    params = node.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"invalid config node at '{ctx.prefix or 'model'}': params of {target} must be a mapping")
    params = dict(params)
    check_params(target, params, target)
    try:
        return builder(params, ctx)
    except TypeError as e:  # an unknown or missing keyword (its name comes from the config: one line)
        raise ConfigError(f"invalid params for {target}: {' '.join(str(e).split())[:300]}") from None
