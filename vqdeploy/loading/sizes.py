"""Model-size budgets: the config numbers that size modules, checked before anything is built.

Modules are built on the meta device, so a huge ``n_embd`` costs no memory, but building still
loops in Python once per layer, res-block, resolution level and attention resolution, the
permuters build their index tables in numpy, and later stages size real allocations from the
trained resolution and latent grid. So each number is checked against a hard cap (far above any
taming model) and, for a Net2NetTransformer, against the model's own block size, before the first
module exists. A failure is one ``ConfigError`` line naming the config key and the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vqdeploy.errors import ConfigError
from vqdeploy.models import permuter

MAX_LAYERS = 1024  # GPT n_layer (taming's largest: 48)
MAX_HEADS = 1024
MAX_WIDTH = 1 << 16  # channels, embedding widths (taming's largest: n_embd 1536, ch*mult 512)
MAX_VOCAB = 1 << 24  # codebook / vocabulary / class / label counts (taming's largest: 16384)
MAX_RES_BLOCKS = 64
MAX_LEVELS = 16  # len(ch_mult): a downsampling factor of 2^15
MAX_ATTN_RESOLUTIONS = 64
MAX_RESOLUTION = 2048  # trained image side (taming's: 256 to 512); runtime image budgets derive from it
MAX_TOKENS = permuter.MAX_TOKENS  # GPT block_size, permuter and latent grids (taming's: 256 to 1024)
GROUPS = 32  # the VQGAN's GroupNorm groups: every channel count must divide by it


def _clip(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:60] + "..."


def integer(params: Mapping[str, Any], key: str, where: str, low: int, high: int, default: Any = ...) -> int:
    """``params[key]`` as an int in [low, high] (bools are not numbers here)."""
    v = params.get(key, default)
    if v is ...:
        raise ConfigError(f"config of {where} misses '{key}'")
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ConfigError(f"invalid params for {where}: {key} = {_clip(v)}, expected an integer in {low}..{high}")
    return v


def _flag(params: Mapping[str, Any], key: str, where: str) -> None:
    v = params.get(key, False)
    if not isinstance(v, (bool, int)) and v is not None:
        raise ConfigError(f"invalid params for {where}: {key} = {_clip(v)}, expected true or false")


def _text(params: Mapping[str, Any], key: str, where: str) -> None:
    if key in params and not isinstance(params[key], str):
        raise ConfigError(f"invalid params for {where}: {key} = {_clip(params[key])}, expected a string")


def _number(params: Mapping[str, Any], key: str, where: str) -> None:
    v = params.get(key, 0.0)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ConfigError(f"invalid params for {where}: {key} = {_clip(v)}, expected a number")


def _probability(params: Mapping[str, Any], key: str, where: str) -> None:
    v = params.get(key, 0.0)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
        raise ConfigError(f"invalid params for {where}: {key} = {_clip(v)}, expected a probability in 0..1")


def latent_side(dd: Mapping[str, Any], where: str) -> int:
    """Check a VQGAN ``ddconfig`` and return the side of its latent grid (resolution / 2^(levels-1))."""
    where = f"{where} ddconfig"
    ch = integer(dd, "ch", where, 1, MAX_WIDTH)
    mult = dd.get("ch_mult", (1, 2, 4, 8))
    if not isinstance(mult, (list, tuple)) or not 1 <= len(mult) <= MAX_LEVELS:
        raise ConfigError(f"invalid params for {where}: ch_mult = {_clip(mult)}, expected a list of 1 to "
                          f"{MAX_LEVELS} integers")
    for m in mult:
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m * ch <= MAX_WIDTH:
            raise ConfigError(f"invalid params for {where}: ch_mult entry {_clip(m)} (with ch = {ch}) must give "
                              f"1..{MAX_WIDTH} channels")
    if ch % GROUPS:
        raise ConfigError(f"invalid params for {where}: ch = {ch} must be a multiple of {GROUPS} (GroupNorm groups)")
    integer(dd, "num_res_blocks", where, 0, MAX_RES_BLOCKS)
    attn = dd.get("attn_resolutions", [])
    if not isinstance(attn, (list, tuple)) or len(attn) > MAX_ATTN_RESOLUTIONS:
        raise ConfigError(f"invalid params for {where}: attn_resolutions = {_clip(attn)}, expected a list of at "
                          f"most {MAX_ATTN_RESOLUTIONS} integers")
    for key in ("in_channels", "out_ch", "z_channels"):
        integer(dd, key, where, 1, MAX_WIDTH)
    for key in ("double_z", "resamp_with_conv", "give_pre_end"):
        _flag(dd, key, where)
    _probability(dd, "dropout", where)
    res = integer(dd, "resolution", where, 1, MAX_RESOLUTION)
    factor = 2 ** (len(mult) - 1)
    if res < factor:
        raise ConfigError(f"invalid params for {where}: resolution {res} is smaller than the downsampling factor "
                          f"{factor} of {len(mult)} levels")
    return res // factor


def _vq(params: Mapping[str, Any], where: str) -> None:
    dd = params.get("ddconfig")
    if not isinstance(dd, Mapping):
        raise ConfigError(f"invalid params for {where}: ddconfig = {_clip(dd)}, expected a mapping")
    latent_side(dd, where)
    integer(params, "n_embed", where, 1, MAX_VOCAB)
    integer(params, "embed_dim", where, 1, MAX_WIDTH)
    for key in ("colorize_nlabels", "n_labels"):
        if params.get(key) is not None:
            integer(params, key, where, 1, MAX_WIDTH)
    unknown = params.get("unknown_index", "random")
    if unknown not in ("random", "extra") and (not isinstance(unknown, int) or isinstance(unknown, bool)
                                               or not 0 <= unknown < MAX_VOCAB):
        raise ConfigError(f"invalid params for {where}: unknown_index = {_clip(unknown)}, expected 'random', "
                          "'extra' or a token id")
    if params.get("remap") is not None and not isinstance(params["remap"], str):
        raise ConfigError(f"invalid params for {where}: remap = {_clip(params['remap'])}, expected a path")
    _flag(params, "sane_index_shape", where)
    _text(params, "image_key", where)
    _number(params, "kl_weight", where)


def _gpt(params: Mapping[str, Any], where: str) -> None:
    integer(params, "vocab_size", where, 1, MAX_VOCAB)
    block = integer(params, "block_size", where, 1, MAX_TOKENS)
    integer(params, "n_layer", where, 1, MAX_LAYERS, 12)
    heads = integer(params, "n_head", where, 1, MAX_HEADS, 8)
    width = integer(params, "n_embd", where, 1, MAX_WIDTH, 256)
    if width % heads:
        raise ConfigError(f"invalid params for {where}: n_embd = {width} is not a multiple of n_head = {heads}")
    integer(params, "n_unmasked", where, 0, block, 0)
    for key in ("embd_pdrop", "resid_pdrop", "attn_pdrop"):
        _probability(params, key, where)


def _permuter(cls: type[permuter.AbstractPermuter]) -> Callable[[Mapping[str, Any], str], None]:
    def check(params: Mapping[str, Any], where: str) -> None:
        if cls is not permuter.Identity:
            try:
                permuter.check_grid(cls, params.get("H"), params.get("W"))
            except ValueError as e:
                raise ConfigError(f"invalid config: {e}") from None

    return check


def _sos(params: Mapping[str, Any], where: str) -> None:
    integer(params, "sos_token", where, 0, MAX_VOCAB - 1)


def _labelator(params: Mapping[str, Any], where: str) -> None:
    integer(params, "n_classes", where, 1, MAX_VOCAB)


def _coord(params: Mapping[str, Any], where: str) -> None:
    integer(params, "n_embed", where, 1, MAX_VOCAB - 1)
    integer(params, "down_factor", where, 1, MAX_RESOLUTION)


def _net2net(params: Mapping[str, Any], where: str) -> None:
    integer(params, "downsample_cond_size", where, -1, MAX_RESOLUTION, -1)
    integer(params, "sos_token", where, 0, MAX_VOCAB - 1, 0)
    _text(params, "first_stage_key", where)
    _text(params, "cond_stage_key", where)
    _flag(params, "unconditional", where)
    _number(params, "pkeep", where)


def check_params(target: str, params: Mapping[str, Any], where: str) -> None:
    """The size checks of ``target`` (a no-op for targets without numbers that size anything)."""
    check = CHECKS.get(target)
    if check is not None:
        check(params, where)


def _node_params(node: Any) -> Mapping[str, Any] | None:
    if isinstance(node, Mapping) and isinstance(node.get("params"), Mapping):
        return node["params"]  # type: ignore[no-any-return]
    return None


def check_sequence(params: Mapping[str, Any], where: str) -> None:
    """A Net2NetTransformer's token grids against its own GPT block size, before any part is built:
    the permuter's H*W and the first stage's latent grid must fit ``block_size``."""
    gpt = _node_params(params.get("transformer_config"))
    if gpt is None:
        return
    block = integer(gpt, "block_size", f"{where} transformer_config", 1, MAX_TOKENS)
    perm = params.get("permuter_config")
    perm_params = _node_params(perm)
    if isinstance(perm, Mapping) and perm_params is not None and "H" in perm_params and "W" in perm_params:
        name = str(perm.get("target", "")).rsplit(".", 1)[-1]
        h, w = perm_params["H"], perm_params["W"]
        if isinstance(h, int) and isinstance(w, int) and h * w > block:
            raise ConfigError(f"invalid config: permuter {name}: H*W = {h}x{w} = {h * w} tokens does not fit the "
                              f"transformer's block_size {block}")
    first = _node_params(params.get("first_stage_config"))
    dd = first.get("ddconfig") if first is not None else None
    if isinstance(dd, Mapping):
        side = latent_side(dd, f"{where} first_stage_config")
        if side * side > block:
            raise ConfigError(f"invalid config: the first stage's latent grid {side}x{side} = {side * side} tokens "
                              f"does not fit the transformer's block_size {block}")


_P = "taming.modules.transformer.permuter."
CHECKS: dict[str, Callable[[Mapping[str, Any], str], None]] = {
    "taming.models.cond_transformer.Net2NetTransformer": _net2net,
    "taming.models.vqgan.VQModel": _vq,
    "taming.models.vqgan.VQNoDiscModel": _vq,
    "taming.models.vqgan.VQSegmentationModel": _vq,
    "taming.models.vqgan.GumbelVQ": _vq,
    "taming.modules.transformer.mingpt.GPT": _gpt,
    "taming.modules.util.SOSProvider": _sos,
    "taming.modules.util.Labelator": _labelator,
    "taming.modules.misc.coord.CoordStage": _coord,
    **{_P + name: _permuter(getattr(permuter, name)) for name in (
        "Identity", "Subsample", "ZCurve", "SpiralOut", "SpiralIn", "Random", "AlternateParsing")},
}
