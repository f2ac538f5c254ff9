"""Procedural sketch -> image pairs for the bundled demo model (``models/demo``).

A scene (an optional horizon plus 1-3 of circle, square, triangle, house, tree) is rasterised
once, 4x supersampled, into a map of region ids. The *sketch* is the region boundaries drawn as
~1.25 px black strokes on white; each *rendering* fills the same regions with colours from a
random palette and a random smooth texture, so object edges coincide with the sketch strokes by
construction. Every sketch gets several renderings, which is what the model learns to sample from.

Deterministic: the same seed gives the same arrays on every machine.

    python tools/demo_data.py --out tools/_data/demo.npz   # writes the train/val splits
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # output resolution
SS = 4  # supersampling factor of the region map
HI = SIZE * SS
STROKE_RADIUS = 2  # stroke half-width in supersampled pixels (~1.25 px strokes at 64x64)
MIN_CONTRAST = 70.0  # minimal RGB distance between the mean colours of touching regions
SHAPES = ("circle", "square", "triangle", "house", "tree")

Color = tuple[float, float, float]


@dataclass(frozen=True)
class Palette:
    name: str
    sky: tuple[Color, Color]  # top, horizon
    ground: tuple[Color, ...]
    backdrop: tuple[Color, ...]  # plain background of scenes without a horizon
    objects: tuple[Color, ...]
    foliage: tuple[Color, ...]
    wood: tuple[Color, ...]


PALETTES = (
    Palette("day", ((70, 130, 220), (185, 215, 245)), ((80, 160, 70), (130, 185, 80), (205, 185, 125)),
            ((235, 230, 210), (200, 220, 235)),
            ((215, 55, 45), (245, 200, 40), (55, 85, 195), (245, 245, 245), (150, 70, 170)),
            ((40, 130, 50), (90, 170, 60)), ((115, 75, 40), (90, 60, 35))),
    Palette("sunset", ((55, 35, 105), (250, 150, 80)), ((75, 60, 50), (110, 80, 60), (150, 95, 70)),
            ((250, 200, 150), (120, 70, 110)),
            ((30, 30, 45), (195, 75, 60), (245, 220, 120), (90, 40, 80)),
            ((60, 70, 40), (40, 50, 35)), ((60, 40, 30), (30, 25, 25))),
    Palette("night", ((10, 15, 40), (45, 60, 110)), ((25, 45, 35), (50, 50, 60)),
            ((30, 30, 55), (20, 45, 60)),
            ((235, 220, 120), (160, 160, 180), (205, 65, 70), (95, 200, 210)),
            ((30, 90, 60), (60, 120, 90)), ((120, 95, 80), (150, 130, 110))),
    Palette("winter", ((150, 175, 205), (230, 235, 242)), ((245, 248, 252), (205, 215, 225)),
            ((225, 232, 240), (175, 195, 215)),
            ((120, 70, 50), (190, 35, 40), (35, 85, 60), (45, 55, 90)),
            ((30, 80, 55), (60, 95, 70)), ((80, 55, 40), (55, 40, 30))),
    Palette("autumn", ((120, 160, 200), (225, 210, 170)), ((165, 120, 50), (120, 95, 45), (185, 150, 80)),
            ((240, 225, 190), (200, 160, 110)),
            ((170, 40, 30), (60, 50, 45), (230, 230, 215), (40, 70, 110)),
            ((220, 120, 30), (190, 60, 30), (235, 180, 40)), ((85, 55, 35), (60, 40, 30))),
    Palette("pastel", ((160, 200, 240), (250, 220, 235)), ((170, 225, 180), (240, 215, 160)),
            ((250, 240, 245), (225, 240, 250)),
            ((240, 130, 150), (120, 150, 230), (250, 175, 90), (130, 200, 160), (170, 120, 200)),
            ((110, 190, 120), (150, 210, 140)), ((170, 120, 90), (150, 100, 80))),
)


@dataclass
class Part:
    """One filled region of a scene, in supersampled pixel coordinates."""

    kind: str  # "ellipse" (x0, y0, x1, y1) or "polygon" (x0, y0, x1, y1, ...)
    coords: tuple[float, ...]
    role: str  # colour group: object, foliage, wood, door


@dataclass
class Scene:
    horizon: float | None  # y of the horizon (64 px units), None for a plain backdrop
    parts: list[Part] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)


# --- scene layout -------------------------------------------------------------------------------
def _rect(x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
    return (x0, y0, x1, y0, x1, y1, x0, y1)


def _rotated_square(cx: float, cy: float, half: float, angle: float) -> tuple[float, ...]:
    c, s = math.cos(angle), math.sin(angle)
    pts = [(-half, -half), (half, -half), (half, half), (-half, half)]
    return tuple(v for x, y in pts for v in (cx + c * x - s * y, cy + s * x + c * y))


def _shape_parts(shape: str, rng: np.random.Generator, horizon: float | None) -> tuple[list[Part], tuple[float, float, float, float]]:
    """Parts of one shape (64 px units) at a random place, and its bounding box."""
    ground_top = 12.0 if horizon is None else horizon + 2.0
    if shape == "circle":
        r = rng.uniform(6, 13)
        cx, cy = rng.uniform(r + 2, SIZE - r - 2), rng.uniform(r + 2, SIZE - r - 2)
        return [Part("ellipse", (cx - r, cy - r, cx + r, cy + r), "object")], (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        half = rng.uniform(6, 12)
        angle = rng.uniform(-0.35, 0.35) if rng.random() < 0.5 else 0.0
        ext = half * (abs(math.cos(angle)) + abs(math.sin(angle)))
        cx, cy = rng.uniform(ext + 2, SIZE - ext - 2), rng.uniform(ext + 2, SIZE - ext - 2)
        return [Part("polygon", _rotated_square(cx, cy, half, angle), "object")], (cx - ext, cy - ext, cx + ext, cy + ext)
    if shape == "triangle":
        w, h = rng.uniform(14, 26), rng.uniform(12, 24)
        x0, base = rng.uniform(2, SIZE - w - 2), rng.uniform(h + 2, SIZE - 2)
        apex = x0 + w * rng.uniform(0.3, 0.7)
        return [Part("polygon", (x0, base, x0 + w, base, apex, base - h), "object")], (x0, base - h, x0 + w, base)
    if shape == "house":
        w, h, roof = rng.uniform(16, 24), rng.uniform(11, 16), rng.uniform(7, 11)
        x0 = rng.uniform(4, SIZE - w - 4)
        base = rng.uniform(max(ground_top, h + roof + 3), SIZE - 3)
        top = base - h
        dw, dh = rng.uniform(4, 6), rng.uniform(6, min(9.0, h - 3))
        dx = x0 + rng.uniform(2, w - dw - 2)
        parts = [
            Part("polygon", _rect(x0, top, x0 + w, base), "object"),
            Part("polygon", (x0 - 2.5, top, x0 + w + 2.5, top, x0 + w / 2, top - roof), "object"),
            Part("polygon", _rect(dx, base - dh, dx + dw, base), "door"),
        ]
        return parts, (x0 - 2.5, top - roof, x0 + w + 2.5, base)
    if shape == "tree":
        tw, th, r = rng.uniform(3, 5), rng.uniform(7, 12), rng.uniform(6, 10)
        cx = rng.uniform(r + 3, SIZE - r - 3)
        base = rng.uniform(max(ground_top, th + 2 * r + 2), SIZE - 2)
        trunk = Part("polygon", _rect(cx - tw / 2, base - th, cx + tw / 2, base), "wood")
        cy = base - th - r + 2
        if rng.random() < 0.5:  # round crown
            crown = Part("ellipse", (cx - r, cy - r, cx + r, cy + r), "foliage")
        else:  # pine
            crown = Part("polygon", (cx - r, base - th + 1, cx + r, base - th + 1, cx, base - th - 2.2 * r), "foliage")
        top = min(cy - r, base - th - 2.2 * r) if crown.kind == "polygon" else cy - r
        return [trunk, crown], (cx - r, top, cx + r, base)
    raise ValueError(shape)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], margin: float = 3.0) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def random_scene(rng: np.random.Generator) -> Scene:
    """A horizon (60%) and 1-3 non-overlapping shapes."""
    horizon = float(rng.uniform(28, 48)) if rng.random() < 0.6 else None
    scene = Scene(horizon)
    boxes: list[tuple[float, ...]] = []
    for shape in rng.choice(SHAPES, size=int(rng.integers(1, 4))):
        for _ in range(50):
            parts, box = _shape_parts(str(shape), rng, horizon)
            if box[1] >= 1 and all(not _overlaps(box, b) for b in boxes):
                scene.parts += parts
                scene.shapes.append(str(shape))
                boxes.append(box)
                break
    return scene


# --- rasterisation ------------------------------------------------------------------------------
def region_map(scene: Scene) -> tuple[np.ndarray, list[str]]:
    """(HI, HI) uint8 region ids and the role of each id (0: sky/backdrop, then ground, parts)."""
    img = Image.new("L", (HI, HI), 0)
    draw = ImageDraw.Draw(img)
    roles = ["sky" if scene.horizon is not None else "backdrop"]
    if scene.horizon is not None:
        roles.append("ground")
        draw.rectangle((0, round(scene.horizon * SS), HI, HI), fill=1)
    for part in scene.parts:
        xy = [v * SS for v in part.coords]
        if part.kind == "ellipse":
            draw.ellipse(xy, fill=len(roles))
        else:
            draw.polygon(xy, fill=len(roles))
        roles.append(part.role)
    return np.asarray(img), roles


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros_like(mask)
    padded = np.pad(mask, radius)
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius + 1:
                out |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


def _downsample(x: np.ndarray) -> np.ndarray:
    """Box filter by SS: (HI, HI, ...) -> (SIZE, SIZE, ...)."""
    return x.reshape(SIZE, SS, SIZE, SS, *x.shape[2:]).mean(axis=(1, 3))


def sketch_from_regions(regions: np.ndarray) -> np.ndarray:
    """(64, 64) uint8 sketch: antialiased black strokes on the region boundaries, on white."""
    edge = np.zeros(regions.shape, dtype=bool)
    edge[:, :-1] |= regions[:, :-1] != regions[:, 1:]
    edge[:-1, :] |= regions[:-1, :] != regions[1:, :]
    cover = _downsample(_dilate(edge, STROKE_RADIUS).astype(np.float32))
    return np.round(255.0 * (1.0 - np.clip(1.4 * cover, 0.0, 1.0))).astype(np.uint8)


def _adjacent(regions: np.ndarray) -> set[tuple[int, int]]:
    pairs = np.concatenate([
        np.stack([regions[:, :-1].ravel(), regions[:, 1:].ravel()], 1),
        np.stack([regions[:-1, :].ravel(), regions[1:, :].ravel()], 1),
    ])
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    return {(int(min(a, b)), int(max(a, b))) for a, b in pairs}


@dataclass(frozen=True)
class Layout:
    """What every rendering of one sketch shares: the regions and how they cover each pixel."""

    scene: Scene
    roles: list[str]
    coverage: np.ndarray  # (R, 64, 64) fraction of each pixel covered by each region
    adjacent: set[tuple[int, int]]


def layout(scene: Scene) -> tuple[Layout, np.ndarray]:
    """The scene's layout and its sketch."""
    regions, roles = region_map(scene)
    onehot = (regions[None] == np.arange(len(roles), dtype=np.uint8)[:, None, None]).astype(np.float32)
    cover = onehot.reshape(len(roles), SIZE, SS, SIZE, SS).mean(axis=(2, 4))
    return Layout(scene, roles, cover, _adjacent(regions)), sketch_from_regions(regions)


_YY, _XX = (g + 0.5 for g in np.mgrid[0:SIZE, 0:SIZE].astype(np.float32))  # pixel centres


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth (64, 64, 1) brightness pattern in 0-255 units, too gentle to read as edges."""
    kind = rng.choice(["flat", "gradient", "stripes", "waves", "clouds"])
    yy, xx = _YY, _XX
    if kind == "flat":
        return np.zeros((SIZE, SIZE, 1), np.float32)
    if kind == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(theta) + yy * math.sin(theta)) / SIZE
        return (rng.uniform(25, 45) * (t - t.mean()))[..., None]
    if kind == "stripes":
        theta = rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])
        t = xx * math.cos(theta) + yy * math.sin(theta)
        return (rng.uniform(9, 15) * np.sin(2 * math.pi * t / rng.uniform(6, 10) + rng.uniform(0, 2 * math.pi)))[..., None]
    if kind == "waves":
        fx, fy = rng.uniform(0.5, 1.2, size=2) * 2 * math.pi / 8
        return (rng.uniform(9, 15) * np.sin(fx * xx + rng.uniform(0, 6)) * np.sin(fy * yy + rng.uniform(0, 6)))[..., None]
    coarse = Image.fromarray(rng.uniform(0, 255, size=(5, 5)).astype(np.uint8))
    noise = np.asarray(coarse.resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32) / 255.0
    return (rng.uniform(20, 35) * (noise - noise.mean()))[..., None]


def _candidates(palette: Palette, role: str) -> tuple[Color, ...]:
    return {"ground": palette.ground, "backdrop": palette.backdrop, "foliage": palette.foliage,
            "wood": palette.wood, "door": palette.wood + palette.objects}.get(role, palette.objects)


def _pick_color(rng: np.random.Generator, cands: tuple[Color, ...], avoid: list[np.ndarray]) -> np.ndarray:
    """A jittered candidate colour far enough from ``avoid``; the most distant one if none is."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = np.clip(np.asarray(cands[rng.integers(len(cands))], np.float32) + rng.normal(0, 10, 3), 0, 255)
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=1e9)
        if d >= MIN_CONTRAST:
            return c
        if d > best_d:
            best, best_d = c, d
    return best  # type: ignore[return-value]


def render(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    """(64, 64, 3) uint8 colour rendering of a layout with a random palette and textures.

    Textures are smooth, so each region's colour field is sampled at pixel centres and the
    pixel is the coverage-weighted mix of the fields (the box-filtered supersampled image).
    """
    palette = PALETTES[rng.integers(len(PALETTES))]
    out = np.zeros((SIZE, SIZE, 3), np.float32)
    means: list[np.ndarray] = []
    for rid, role in enumerate(lay.roles):
        if role == "sky":
            top, bottom = (np.asarray(c, np.float32) + rng.normal(0, 8, 3) for c in palette.sky)
            t = np.clip(_YY / (lay.scene.horizon or SIZE), 0, 1)[..., None]
            base = top + (bottom - top) * t
            mean = (top + bottom) / 2
            tex = 0.5 * _texture(rng)
        else:
            neighbours = [means[o] for o in range(rid) if (o, rid) in lay.adjacent]
            mean = _pick_color(rng, _candidates(palette, role), neighbours)
            base, tex = mean, _texture(rng)
        out += lay.coverage[rid][..., None] * np.clip(base + tex, 0, 255)
        means.append(mean)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --- dataset ------------------------------------------------------------------------------------
def describe(scene: Scene) -> str:
    """A file-name friendly description, e.g. ``house-tree_horizon``."""
    return "-".join(scene.shapes) + ("_horizon" if scene.horizon is not None else "_plain")


def make_split(seed: int, n_sketches: int, n_renders: int) -> dict[str, np.ndarray]:
    """``sketch`` (N,64,64) uint8, ``image`` (N,R,64,64,3) uint8 and ``name`` (N,) str."""
    rng = np.random.default_rng(seed)
    sketches, images, names = [], [], []
    for _ in range(n_sketches):
        scene = random_scene(rng)
        lay, sketch = layout(scene)
        sketches.append(sketch)
        images.append(np.stack([render(lay, rng) for _ in range(n_renders)]))
        names.append(describe(scene))
    return {"sketch": np.stack(sketches), "image": np.stack(images), "name": np.asarray(names)}


def split_seed(seed: int, split: str) -> int:
    """Train and held-out splits draw from disjoint random streams of one seed."""
    return seed * 1000 + {"train": 1, "val": 2}[split]


def make_dataset(seed: int = 0, n_train: int = 3000, n_val: int = 200, n_renders: int = 4) -> dict[str, np.ndarray]:
    """``train_*`` and ``val_*`` (held-out) arrays of ``make_split``."""
    train = make_split(split_seed(seed, "train"), n_train, n_renders)
    val = make_split(split_seed(seed, "val"), n_val, n_renders)
    return {**{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in val.items()}}


def load_or_make(path: Path, seed: int, n_train: int, n_val: int, n_renders: int) -> dict[str, np.ndarray]:
    """The dataset cached at ``path`` if it was made with the same arguments, else a new one."""
    meta = np.asarray([seed, n_train, n_val, n_renders])
    if path.is_file():
        with np.load(path) as f:
            if np.array_equal(f["meta"], meta):
                return {k: f[k] for k in f.files if k != "meta"}
    data = make_dataset(seed, n_train, n_val, n_renders)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, meta=meta, **data)  # type: ignore[arg-type]
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tools/_data/demo.npz"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--renders", type=int, default=4)
    args = ap.parse_args()
    data = load_or_make(args.out, args.seed, args.train, args.val, args.renders)
    print({k: v.shape for k, v in data.items()})


if __name__ == "__main__":
    main()
