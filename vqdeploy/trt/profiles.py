"""Optimization profiles: for every profile of a graph, the (min, opt, max) shape of every input.

The manifest gives each graph's profiles as ranges of its named dims (``batch``, ``latent_h``,
``tokens`` ...; spatial dims count latent cells; the transformer's KV cache has a fixed capacity); the input shapes follow from the
TensorSpecs (``latent_h*4`` pixels). ``--batch`` replaces the batch range of every profile;
``--size`` (pixels) replaces the spatial range of the image graphs.
"""

from __future__ import annotations

import re
from typing import Any

from vqdeploy.artifacts.tensors import TensorSpec
from vqdeploy.errors import ConfigError

Range = tuple[int, int, int]
Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # min, opt, max
Profiles = dict[str, dict[str, ShapeRange]]  # profile -> input -> shapes
SizeRange = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (h, w) min, opt, max

SPATIAL = {"latent_h": 0, "latent_w": 1, "height": 0, "width": 1}


def parse_range(text: str, option: str) -> Range:
    """'MIN:OPT:MAX' or 'N' (fixed)."""
    parts = text.split(":")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3 or not 1 <= vals[0] <= vals[1] <= vals[2]:
        raise ConfigError(f"{option} {text!r}: expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, or one number")
    return vals[0], vals[1], vals[2]


def parse_size(text: str) -> SizeRange:
    """'MIN:OPT:MAX' in pixels, each 'S' (square) or 'HxW'; or one size (fixed)."""
    parts = text.lower().split(":")
    if len(parts) == 1:
        parts *= 3
    sizes = []
    for p in parts:
        m = re.fullmatch(r"(\d+)(?:x(\d+))?", p.strip())
        if len(parts) != 3 or not m:
            raise ConfigError(f"--size {text!r}: expected MIN:OPT:MAX pixels, each S or HxW (e.g. 256:256:512x1024)")
        sizes.append((int(m.group(1)), int(m.group(2) or m.group(1))))
    lo, opt, hi = sizes
    for axis in (0, 1):
        if not 1 <= lo[axis] <= opt[axis] <= hi[axis]:
            raise ConfigError(f"--size {text!r}: each side needs 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def pixel_scale(graph: dict[str, Any], dim: str) -> int:
    """Pixels per unit of ``dim``: k where a tensor of the graph has the extent 'dim*k' (else 1)."""
    for t in graph["inputs"] + graph["outputs"]:
        for d in t["shape"]:
            if isinstance(d, str) and d.startswith(f"{dim}*"):
                return int(d.split("*")[1])
    return 1


def dim_ranges(graph: dict[str, Any], name: str, profile: dict[str, list[int]],
               batch: Range | None, size: SizeRange | None) -> dict[str, Range]:
    """One profile's dim ranges with the overrides applied."""
    dims = {d: (int(r[0]), int(r[1]), int(r[2])) for d, r in profile.items()}
    if batch is not None and "batch" in dims:
        dims["batch"] = batch
    if size is not None:
        for d, axis in SPATIAL.items():
            if d not in dims:
                continue
            k = pixel_scale(graph, d)
            px = [s[axis] for s in size]
            if any(p % k for p in px):
                raise ConfigError(f"--size: {name} works on {k}-pixel cells; the {d} range "
                                  f"{':'.join(map(str, px))} is not all multiples of {k}")
            dims[d] = (px[0] // k, px[1] // k, px[2] // k)
    return dims


def resolve(graph: dict[str, Any], name: str, batch: Range | None = None, size: SizeRange | None = None) -> Profiles:
    """Per profile, per input: (min, opt, max) shapes, from the manifest entry of graph ``name``."""
    if not graph.get("profiles"):
        raise ConfigError(f"{name}: the manifest lists no optimization profiles for it; re-export")
    inputs = [TensorSpec.from_dict(t) for t in graph["inputs"]]
    out: Profiles = {}
    for pname, profile in graph["profiles"].items():
        dims = dim_ranges(graph, name, profile, batch, size)
        shapes: dict[str, ShapeRange] = {}
        for t in inputs:
            try:
                lo, opt, hi = (t.concrete({d: r[i] for d, r in dims.items()}) for i in range(3))
            except KeyError as e:
                raise ConfigError(f"{name}: profile '{pname}' has no range for dim {e} of input '{t.name}'; re-export") from None
            shapes[t.name] = (lo, opt, hi)
        out[pname] = shapes
    return out


def to_json(profiles: Profiles) -> dict[str, Any]:
    return {p: {n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for n, s in shapes.items()}
            for p, shapes in profiles.items()}
