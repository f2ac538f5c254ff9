"""Object layouts (scene synthesis): upstream's ``DummyCondStage`` with an objects builder.

``ObjectLayout`` is the whole conditioning kind in one place: where its parameters come from (the
run's data config), how the manifest describes it (so an app without Python builds the same
tokens), reading and checking a scene file, the tokens, seeded parity inputs, and a picture of the
layout. It is registered like every kind (``conditions/registry.py``); nothing else knows it.

Scene file: ``{"objects": [{"category": 17, "bbox": [x0, y0, w, h]}, ...], "crop": [x0, y0, w, h]}``
in relative coordinates; ``crop`` and the per-object flags ``is_group_of``, ``is_occluded``,
``is_depiction``, ``is_inside`` are optional. The token rule is in ``layout_builder``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy.bounds import MAX_VOCAB, TOKENS
from vqdeploy.conditions.base import Condition, ConditionInput, LayoutInput, Log, Reading, repeat_rows
from vqdeploy.conditions.categories import category_names
from vqdeploy.conditions.layout_builder import BUILDERS, Box, LayoutBuilder, LayoutObject
from vqdeploy.conditions.registry import register
from vqdeploy.errors import ArtifactError, ConfigError, InputError
from vqdeploy.images import read_input_file
from vqdeploy.schema import fail, integer, list_of, nullable, obj, one_of, parse_json, string

KIND = "objects"
MAX_SCENE_BYTES = 1 << 20
MAX_SCENE_OBJECTS = 10_000  # work bound; a model keeps its first no_max_objects (30 for upstream's)
FLAGS = ("is_group_of", "is_occluded", "is_depiction", "is_inside")
OBJECT_CLASSES_OPTION = "--object-classes"

# upstream's annotated-object data sets; their number of categories where the config alone fixes it
DATASETS = {
    "taming.data.annotated_objects_coco.AnnotatedObjectsCoco": "coco",
    "taming.data.annotated_objects_open_images.AnnotatedObjectsOpenImages": "open_images",
}


# the token rule as the manifest states it (for apps without Python; layout_builder.py implements it)
BUILDER_RULE = (
    "S = floor(sqrt(no_tokens)); point(x, y) = round(y*(S-1))*S + round(x*(S-1)), round half to even, in double "
    "precision; none = no_tokens - 1. object = category + no_object_classes * m, m = 1 if is_group_of (when "
    "use_group_parameter) | 2 occluded | 4 depiction | 8 inside (when use_additional_parameters). Keep the first "
    "no_max_objects objects, in the order given; drop those whose box has no area in common with the crop (none: "
    "[0,0,1,1]); rescale the rest into the crop, or into [0,0,1,1] when encode_crop: x0' = clamp((x0-cx)/cw, 0, 1), "
    "y0' likewise, w' = min(w/cw, 1-x0'), h' = min(h/ch, 1-y0'). Per object the descriptor's tokens (objects_bbox: "
    "object, point(x0',y0'), point(x0'+w',y0'+h'); objects_center_points: object, point(x0'+w'/2, y0'+h'/2)); pad "
    "with none to no_max_objects objects; when encode_crop append point(cx,cy), point(cx+cw,cy+ch)."
)


def _known_classes(dataset: str | None, params: Mapping[str, Any]) -> int | None:
    """What upstream's data set would count, where that follows from public facts alone: COCO 2017
    without an allow list or mapping loads the 80 "things" and 92 "stuff" categories of
    instances/stuff_*2017.json and drops "other" (``load_categories``): 171. Open Images depends on
    its allow list (``open_images_helper``), which we do not reproduce: unknown."""
    if dataset == "coco" and not params.get("category_allow_list_target") and not params.get("category_mapping_target"):
        return 171
    return None


def _bool(v: Any, where: str) -> None:
    if not isinstance(v, bool):
        fail(where, "true or false", v)


@register
class ObjectLayout(Condition):
    """The ``objects`` conditioning kind of one model."""

    kind = KIND
    # the token builder's parameters (``layout_builder`` states the rule); ``from_manifest`` checks
    # what one number says about another
    schema = obj({"key": one_of(*BUILDERS), "tokens": TOKENS, "builder": obj({
        "name": one_of(*BUILDERS), "no_object_classes": integer(1, MAX_VOCAB),
        "no_max_objects": integer(1, 4096), "no_tokens": integer(4, MAX_VOCAB), "encode_crop": _bool,
        "use_group_parameter": _bool, "use_additional_parameters": _bool})},
        {"dataset": nullable(string(64)), "categories": nullable(list_of(string(128), 1, 4096))})
    what = "an object layout"
    value_type = LayoutInput
    input_name = "scene file"
    picture_width = 256
    draws_layout = True

    def __init__(self, builder: LayoutBuilder, dataset: str | None = None, names: list[str] | None = None) -> None:
        """``names``: category number -> name, where the data set's numbering is known."""
        self.builder = builder
        self.tokens = builder.tokens
        self.dataset = dataset
        self.names = names[: builder.no_object_classes] if names else None
        self.numbers = {n: i for i, n in enumerate(self.names or [])}
        self.folded = {n.casefold(): i for n, i in self.numbers.items()}

    # --- where the parameters come from ---------------------------------------------------------
    @classmethod
    def from_config(cls, conditional_key: str, data: Any, object_classes: int | None = None) -> ObjectLayout:
        """The builder upstream's data set makes for ``conditional_key``, from the run's ``data:`` node;
        ``no_object_classes`` from the config, else the data set's known count, else ``object_classes``."""
        if conditional_key not in BUILDERS:
            raise ConfigError(f"DummyCondStage conditional_key '{str(conditional_key)[:64]}': expected one of "
                              f"{', '.join(BUILDERS)}")
        target, params = _dataset_params(data)
        if params is None:
            raise ConfigError(f"the {conditional_key} model's token builder is configured by the run's data set "
                              "(data.params.validation/train.params: no_tokens, max_objects_per_image, encode_crop, "
                              "use_group_parameter); the config has none: pass a *-project.yaml with its data section")
        dataset = DATASETS.get(target) if isinstance(target, str) else None

        def need(key: str, kind: type) -> Any:
            v = params.get(key)
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                raise ConfigError(f"data set params: '{key}' must be {'an integer' if kind is int else 'true or false'}"
                                  f" (the {conditional_key} token builder needs it)")
            return v

        stated = params.get("no_object_classes")
        if stated:  # upstream: ``no_object_classes if no_object_classes else len(categories)``
            classes = need("no_object_classes", int)
            if object_classes is not None and object_classes != classes:
                raise ConfigError(f"{OBJECT_CLASSES_OPTION} {object_classes} disagrees with the config's "
                                  f"no_object_classes {classes}")
        else:
            known = _known_classes(dataset, params)
            classes = object_classes if object_classes is not None else known
            if classes is None:
                raise ConfigError(f"the number of object classes of this {conditional_key} model is unknown: the "
                                  "data config states no no_object_classes and upstream counts the categories of "
                                  f"the loaded annotations; pass {OBJECT_CLASSES_OPTION} N")
        additional = params.get("use_additional_parameters", False)  # upstream's data sets default it to false
        if not isinstance(additional, bool):
            raise ConfigError(f"data set params: 'use_additional_parameters' must be true or false (the "
                              f"{conditional_key} token builder reads it)")
        builder = LayoutBuilder(conditional_key, classes, need("max_objects_per_image", int), need("no_tokens", int),
                                need("encode_crop", bool), need("use_group_parameter", bool),
                                use_additional_parameters=additional)
        plain = not params.get("category_allow_list_target") and not params.get("category_mapping_target")
        layout = cls(builder, dataset, category_names(dataset) if plain else None)
        layout.check()
        return layout

    def check(self, vocab_size: int | None = None) -> None:
        """Numbers upstream's ``build`` would assert on, as a ConfigError before anything runs."""
        b = self.builder
        if not 4 <= b.no_tokens <= (1 << 24) or not 1 <= b.no_object_classes or not 1 <= b.no_max_objects <= 4096:
            raise ConfigError(f"{b.kind} builder: no_tokens {b.no_tokens}, no_object_classes {b.no_object_classes}, "
                              f"max_objects_per_image {b.no_max_objects} out of range")
        top = b.no_object_classes * (b.max_modifier + 1) - 1
        if top >= b.no_tokens:
            raise ConfigError(f"{b.kind} builder: {b.no_object_classes} classes with their modifiers need tokens up to "
                              f"{top}, over no_tokens {b.no_tokens}")
        if vocab_size is not None and b.no_tokens > vocab_size:
            raise ConfigError(f"{b.kind} builder: no_tokens {b.no_tokens} is over the transformer's vocabulary "
                              f"{vocab_size}")

    # --- manifest ----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        b = self.builder
        return {
            "kind": KIND, "key": b.kind, "tokens": b.tokens, "dataset": self.dataset,
            "builder": {"name": b.kind, "no_object_classes": b.no_object_classes, "no_max_objects": b.no_max_objects,
                        "no_tokens": b.no_tokens, "no_sections": b.no_sections, "none_token": b.none,
                        "encode_crop": b.encode_crop, "use_group_parameter": b.use_group_parameter,
                        "use_additional_parameters": b.use_additional_parameters,
                        "descriptor": ["object", "point(x0,y0)", "point(x0+w,y0+h)"] if b.kind == "objects_bbox"
                        else ["object", "point(x0+w/2,y0+h/2)"]},
            "input": self.input_help(),
            "rule": BUILDER_RULE,
            "categories": self.names,
        }

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any], where: str = "manifest.json: model.conditioning") -> ObjectLayout:
        b = entry["builder"]
        layout = cls(LayoutBuilder(b["name"], b["no_object_classes"], b["no_max_objects"], b["no_tokens"],
                                   b["encode_crop"], b["use_group_parameter"], b["use_additional_parameters"]),
                     entry.get("dataset"), entry.get("categories"))
        try:
            layout.check()
        except ConfigError as e:
            raise ArtifactError(f"{where}: {e} (re-export)") from None
        if layout.builder.tokens != entry["tokens"]:
            raise ArtifactError(f"{where}.tokens: {entry['tokens']} is not the builder's "
                                f"{layout.builder.tokens} (re-export)")
        return layout

    def check_model(self, vocab_size: int, where: str) -> None:
        if self.builder.no_tokens > vocab_size:
            self.fail(f"{where}.builder.no_tokens", f"over the vocabulary {vocab_size}")

    @classmethod
    def claims(cls, path: Path) -> bool:
        return is_scene_file(path)

    def check_size(self, size: tuple[int, int], first: Any) -> None:
        res = first.resolution
        if size != (res, res):
            raise InputError(f"--size {size[1]}x{size[0]}: an object-layout model samples its trained {res}x{res} "
                             "(the layout is relative to the whole image)")

    def condition_tokens(self, backend: Any, value: ConditionInput, batch: int) -> np.ndarray:
        """The tokens themselves (built on the host from the scene)."""
        assert isinstance(value, LayoutInput)
        return repeat_rows(value.tokens, batch)

    def parity_input(self, rng: np.random.Generator, batch: int, first: Any, image: np.ndarray) -> np.ndarray | None:
        return self.parity_condition(rng, batch)

    def as_value(self, batch_input: np.ndarray | None) -> ConditionInput:
        assert batch_input is not None
        return LayoutInput(batch_input)

    def input_help(self) -> str:
        b = self.builder
        flags = "is_group_of" if b.use_group_parameter else "none used by this model"
        crop = "the crop is encoded as 2 tokens" if b.encode_crop else "boxes are rescaled into the crop"
        names = f" or a {self.dataset} name (model.conditioning.categories)" if self.names else ""
        return (f"scene JSON file: {{\"objects\": [{{\"category\": 0..{b.no_object_classes - 1}{names}, "
                f"\"bbox\": [x0, y0, w, h]}},"
                f" ...], \"crop\": [x0, y0, w, h]}} in relative coordinates [0,1]; crop optional ({crop}); "
                f"optional flags per object: {', '.join(FLAGS)} (true/false; used: {flags}); the first "
                f"{b.no_max_objects} objects are kept, in the order given")

    # --- input -------------------------------------------------------------------------------------
    def scene_tokens(self, scene: Any, label: str, log: Log | None = None) -> np.ndarray:
        """A parsed scene -> (1, tokens) int64."""
        objects, crop = self.parse(scene, label)
        return self.build_tokens(objects, crop, log)

    def read_file(self, path: Path, reading: Reading) -> ConditionInput:
        """``run``'s INPUT (or the library's path): a scene file, nothing else."""
        if not is_scene_file(path):
            raise InputError(f"{path}: this model is conditioned on an object layout, not an image: pass a scene "
                             "JSON file (`vqdeploy inspect` shows what it must contain)")
        return LayoutInput(self.scene_tokens(read_scene_json(path), str(path), reading.log))

    def read_bytes(self, data: bytes, reading: Reading) -> ConditionInput:
        """An uploaded scene file (``serve``): its JSON bytes."""
        if not data:
            return self.read_nothing(reading)
        return LayoutInput(self.scene_tokens(parse_scene(data, "condition"), "condition", reading.log))

    def read_nothing(self, reading: Reading) -> ConditionInput:
        what = {"cli": "pass a scene JSON file as INPUT (`vqdeploy inspect` shows what it must contain)",
                "library": "pass a scene file, a scene mapping or the layout's tokens",
                "http": "send the scene as the 'condition' (a JSON object, or a scene file part)"}[reading.via]
        raise InputError(f"this model is conditioned on an object layout: {what}")

    def read_value(self, value: Any, reading: Reading) -> ConditionInput:
        """The library's condition: a parsed scene mapping, or the (tokens,) / (1, tokens) tokens of one layout."""
        if isinstance(value, np.ndarray):
            return LayoutInput(self.check_tokens(value))
        if isinstance(value, Mapping):
            return LayoutInput(self.scene_tokens(value, "scene", reading.log))
        raise InputError(f"this model is conditioned on an object layout: pass a scene file, a scene mapping or "
                         f"tokens, not {type(value).__name__}")

    def parse(self, scene: Any, label: str = "scene") -> tuple[list[LayoutObject], Box | None]:
        if not isinstance(scene, Mapping):
            raise InputError(f"{label}: expected a JSON object {{\"objects\": [...], \"crop\": [...]}}")
        _keys(scene, {"objects"}, {"objects", "crop"}, label)
        items = scene["objects"]
        if not isinstance(items, list):
            raise InputError(f"{label}: 'objects' must be a list of {{\"category\", \"bbox\"}} objects")
        if len(items) > MAX_SCENE_OBJECTS:
            raise InputError(f"{label}: {len(items)} objects, over {MAX_SCENE_OBJECTS}")
        objects = [self._object(o, f"{label}: objects[{i}]") for i, o in enumerate(items)]
        crop = None
        if scene.get("crop") is not None:
            crop = _box(scene["crop"], f"{label}: crop", positive=True)
        return objects, crop

    def _object(self, o: Any, where: str) -> LayoutObject:
        if not isinstance(o, Mapping):
            raise InputError(f"{where}: expected an object {{\"category\", \"bbox\"}}")
        _keys(o, {"category", "bbox"}, {"category", "bbox", *FLAGS}, where)
        flags = {}
        for f in FLAGS:
            v = o.get(f, False)
            if not isinstance(v, bool):
                raise InputError(f"{where}.{f}: expected true or false")
            flags[f] = v
        return LayoutObject(self.category(o["category"], f"{where}.category"), _box(o["bbox"], f"{where}.bbox"),
                            **flags)

    def category(self, value: Any, where: str) -> int:
        n = self.builder.no_object_classes
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < n:
                raise InputError(f"{where}: unknown category {value}: this model has categories 0..{n - 1}")
            return value
        if isinstance(value, str):
            number = self.numbers.get(value, self.folded.get(value.casefold()))
            if number is not None:
                return number
            if self.names:
                raise InputError(f"{where}: unknown category name '{value[:64]}' (not one of the {len(self.names)} "
                                 f"{self.dataset} names in manifest.json model.conditioning.categories)")
            raise InputError(f"{where}: unknown category name '{value[:64]}': "
                             + ("this model's data set is not known" if self.dataset is None else
                                f"this {self.dataset} model's category numbering is not known (an allow list or "
                                "mapping decides it)") + f", so give category numbers (0..{n - 1})")
        raise InputError(f"{where}: expected a category number (0..{n - 1})")

    def build_tokens(self, objects: list[LayoutObject], crop: Box | None = None,
               log: Callable[[str], None] | None = None) -> np.ndarray:
        b = self.builder
        if len(objects) > b.no_max_objects and log is not None:
            log(f"warning: the scene has {len(objects)} objects; this model takes {b.no_max_objects}: the first "
                f"{b.no_max_objects} are kept (as upstream)")
        if not objects and log is not None:
            log("warning: the scene has no objects")
        return np.array([b.build(objects, crop)], dtype=np.int64)

    def check_tokens(self, tokens: np.ndarray, where: str = "the condition") -> np.ndarray:
        """The tokens of one layout handed to the library: (tokens,) or (1, tokens) ids below no_tokens
        (every sample of a request has the same condition, as with an image)."""
        b = self.builder
        if isinstance(tokens, np.ndarray) and tokens.ndim == 1:
            tokens = tokens[None]
        if not isinstance(tokens, np.ndarray) or tokens.dtype.kind not in "iu" or tokens.shape != (1, b.tokens):
            raise InputError(f"{where}: expected a scene file, a scene mapping or the {b.tokens} integer tokens "
                             "of one layout")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= b.no_tokens):
            raise InputError(f"{where}: layout tokens must be in 0..{b.no_tokens - 1}")
        return tokens.astype(np.int64)

    # --- parity ------------------------------------------------------------------------------------
    def parity_condition(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """(B, tokens): seeded scenes of 1..no_max_objects boxes (flags and a crop on odd samples)."""
        rows = []
        for i in range(batch):
            n = int(rng.integers(1, self.builder.no_max_objects + 1))
            objects = []
            for _ in range(n):
                w, h = rng.uniform(0.05, 0.6, 2)
                x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
                objects.append(LayoutObject(int(rng.integers(0, self.builder.no_object_classes)),
                                            (float(x0), float(y0), float(w), float(h)), bool(rng.random() < 0.3)))
            crop = (0.1, 0.05, 0.8, 0.9) if i % 2 else None
            rows.append(self.build_tokens(objects, crop)[0])
        return np.stack(rows)

    # --- picture -----------------------------------------------------------------------------------
    def picture(self, value: ConditionInput, size: tuple[int, int] = (256, 256)) -> np.ndarray | None:
        """(H, W, 3) uint8: the layout the model got (decoded from its tokens: one layout, or the first
        row of a batch), boxes or points with their category numbers (+ g for group-of), the crop in grey."""
        from PIL import Image, ImageDraw

        if not isinstance(value, LayoutInput):
            return None
        tokens = np.asarray(value.tokens)
        if tokens.ndim == 2:
            tokens = tokens[0]
        b = self.builder
        h, w = size
        img = Image.new("RGB", (w, h), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        seq = [int(t) for t in np.asarray(tokens).reshape(-1)]
        crop = seq[-2:] if b.encode_crop else None
        body = seq[: b.no_max_objects * b.descriptor_length]
        for i in range(0, len(body), b.descriptor_length):
            rep = body[i]
            if rep == b.none:
                continue
            color = _PALETTE[(i // b.descriptor_length) % len(_PALETTE)]
            category = rep % b.no_object_classes
            name = self.names[category] if self.names and category < len(self.names) else str(category)
            label = name + (" (g)" if rep // b.no_object_classes & 1 else "")
            x0, y0 = b.coordinates(body[i + 1])
            if b.descriptor_length == 3:
                x1, y1 = b.coordinates(body[i + 2])
                draw.rectangle([x0 * w, y0 * h, max(x0, x1) * w, max(y0, y1) * h], outline=color, width=2)
                draw.text((x0 * w + 3, y0 * h + 2), label, fill=(0, 0, 0))
            else:
                r = max(2, min(w, h) // 80)
                draw.ellipse([x0 * w - r, y0 * h - r, x0 * w + r, y0 * h + r], fill=color)
                draw.text((x0 * w + r + 1, y0 * h - 5), label, fill=(0, 0, 0))
        if crop is not None:
            (cx0, cy0), (cx1, cy1) = b.coordinates(crop[0]), b.coordinates(crop[1])
            draw.rectangle([cx0 * w, cy0 * h, max(cx0, cx1) * w, max(cy0, cy1) * h], outline=(63, 63, 63), width=1)
        return np.asarray(img)


_PALETTE = [(30, 118, 179), (255, 126, 13), (43, 159, 43), (213, 38, 39), (147, 102, 188),
            (139, 85, 74), (226, 118, 193), (126, 126, 126), (187, 188, 33), (22, 189, 206)]  # upstream's tab10


def is_scene_file(path: Path | str) -> bool:
    return str(path).lower().endswith(".json")


def read_scene_json(path: Path) -> Any:
    return parse_scene(read_input_file(path, "scene", MAX_SCENE_BYTES), str(path))


def parse_scene(data: bytes, label: str) -> Any:
    """A scene file's bytes as JSON, bounded (its content is checked by ``ObjectLayout.parse``)."""
    if len(data) > MAX_SCENE_BYTES:
        raise InputError(f"{label}: over {MAX_SCENE_BYTES >> 20} MiB; not a scene file")
    try:
        return parse_json(data, label)
    except ArtifactError as e:
        raise InputError(f"{e} (a scene file is JSON)") from None


def _keys(d: Mapping[str, Any], required: set[str], allowed: set[str], where: str) -> None:
    missing = sorted(required - set(d))
    if missing:
        raise InputError(f"{where}: missing key '{missing[0]}' (expected {', '.join(sorted(allowed))})")
    extra = sorted(str(k)[:40] for k in set(d) - allowed)
    if extra:
        raise InputError(f"{where}: unknown key '{extra[0]}' (expected {', '.join(sorted(allowed))})")


def _box(v: Any, where: str, positive: bool = False) -> Box:
    if not isinstance(v, list) or len(v) != 4 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        raise InputError(f"{where}: expected [x0, y0, w, h], four numbers in [0, 1]")
    x0, y0, w, h = (float(x) for x in v)
    if w < 0 or h < 0 or (positive and (w <= 0 or h <= 0)):
        raise InputError(f"{where}: {'a crop needs' if positive else 'a box cannot have'} "
                         f"{'a positive' if positive else 'a negative'} size (w = {w:g}, h = {h:g})")
    eps = 1e-9
    if not (0 <= x0 <= 1 and 0 <= y0 <= 1 and x0 + w <= 1 + eps and y0 + h <= 1 + eps):
        raise InputError(f"{where}: [{x0:g}, {y0:g}, {w:g}, {h:g}] is outside [0, 1] (relative coordinates: "
                         "x0 + w and y0 + h at most 1)")
    return x0, y0, w, h


def _dataset_params(data: Any) -> tuple[Any, Mapping[str, Any] | None]:
    """(target, params) of the first data set (validation, train, test) that configures a builder."""
    params = data.get("params") if isinstance(data, Mapping) else None
    if not isinstance(params, Mapping):
        return None, None
    for split in ("validation", "train", "test"):
        node = params.get(split)
        if isinstance(node, Mapping) and isinstance(node.get("params"), Mapping) and "no_tokens" in node["params"]:
            return node.get("target"), node["params"]
    return None, None
