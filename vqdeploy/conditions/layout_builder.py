"""taming's object-layout token builders, in pure Python (no torch: the runtime builds the tokens).

``ObjectsCenterPointsConditionalBuilder`` and ``ObjectsBoundingBoxConditionalBuilder`` of
``taming/data/conditional_builder``: the same arithmetic in Python floats (doubles) and Python's
``round`` (half to even), so the tokens are identical. One deliberate difference: upstream's
``build`` shuffles the objects (a training augmentation); here they keep the order given.

The rule, for an app without Python (also in the README):

- ``S = floor(sqrt(no_tokens))``; a point ``(x, y)`` in [0,1] is ``round(y*(S-1))*S + round(x*(S-1))``
  with round-half-to-even; ``none = no_tokens - 1`` pads.
- An object is ``category + no_object_classes * modifier``, ``modifier`` = 1 if group-of (when
  ``use_group_parameter``) | 2 occluded | 4 depiction | 8 inside (those three when
  ``use_additional_parameters``).
- Keep the first ``no_max_objects`` objects; drop those whose box does not overlap the crop (area of
  the intersection > 0; no crop = ``[0,0,1,1]``); rescale each kept box into the crop
  (``encode_crop``: into ``[0,0,1,1]`` instead) with x0 = clamp((x0-cx)/cw), y0 likewise,
  w = min(w/cw, 1-x0), h = min(h/ch, 1-y0).
- bbox builder: per object (object, point(x0,y0), point(x0+w,y0+h)); center points builder:
  (object, point(x0+w/2, y0+h/2)); padded with ``none`` to ``no_max_objects`` objects; then, when
  ``encode_crop``, the crop's two points (point(cx,cy), point(cx+cw,cy+ch)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Box = tuple[float, float, float, float]  # x0, y0, w, h relative to the image
FULL_CROP: Box = (0.0, 0.0, 1.0, 1.0)
BUILDERS = ("objects_bbox", "objects_center_points")


@dataclass(frozen=True)
class LayoutObject:
    category: int
    bbox: Box
    is_group_of: bool = False
    is_occluded: bool = False
    is_depiction: bool = False
    is_inside: bool = False


@dataclass(frozen=True)
class LayoutBuilder:
    """The parameters of upstream's builder; ``kind`` is the conditional key (``objects_bbox`` or
    ``objects_center_points``)."""

    kind: str
    no_object_classes: int
    no_max_objects: int
    no_tokens: int
    encode_crop: bool
    use_group_parameter: bool
    use_additional_parameters: bool = False

    @property
    def no_sections(self) -> int:
        return int(math.sqrt(self.no_tokens))

    @property
    def none(self) -> int:
        return self.no_tokens - 1

    @property
    def descriptor_length(self) -> int:
        return 3 if self.kind == "objects_bbox" else 2

    @property
    def tokens(self) -> int:
        """upstream's ``embedding_dim``: the number of condition tokens."""
        return self.no_max_objects * self.descriptor_length + (2 if self.encode_crop else 0)

    @property
    def max_modifier(self) -> int:
        return (8 | 4 | 2 if self.use_additional_parameters else 0) | (1 if self.use_group_parameter else 0)

    def point(self, x: float, y: float) -> int:
        s = self.no_sections - 1
        return int(round(y * s)) * self.no_sections + int(round(x * s))

    def coordinates(self, token: int) -> tuple[float, float]:
        """The inverse of ``point`` (a grid cell's corner), for drawing a token sequence."""
        s = self.no_sections - 1
        return token % self.no_sections / s, token // self.no_sections / s

    def representation(self, obj: LayoutObject) -> int:
        modifier = 0
        if self.use_group_parameter:
            modifier |= 1 * (obj.is_group_of is True)
        if self.use_additional_parameters:
            modifier |= 2 * (obj.is_occluded is True)
            modifier |= 4 * (obj.is_depiction is True)
            modifier |= 8 * (obj.is_inside is True)
        return obj.category + self.no_object_classes * modifier

    def kept(self, objects: list[LayoutObject], crop: Box | None) -> list[LayoutObject]:
        """The objects that make tokens, boxes rescaled: the first ``no_max_objects``, inside the crop."""
        crop = crop or FULL_CROP
        objects = [o for o in objects[: self.no_max_objects] if _intersection_area(o.bbox, crop) > 0.0]
        frame = FULL_CROP if self.encode_crop else crop
        return [LayoutObject(o.category, _rescale(o.bbox, frame), o.is_group_of, o.is_occluded, o.is_depiction,
                             o.is_inside) for o in objects]

    def build(self, objects: list[LayoutObject], crop: Box | None = None) -> list[int]:
        """upstream ``build(annotations, crop_coordinates)`` without the shuffle and the flip."""
        out: list[int] = []
        for o in self.kept(objects, crop):
            x0, y0, w, h = o.bbox
            if self.kind == "objects_bbox":
                out += [self.representation(o), self.point(x0, y0), self.point(x0 + w, y0 + h)]
            else:
                out += [self.representation(o), self.point(x0 + w / 2, y0 + h / 2)]
        out += [self.none] * (self.no_max_objects * self.descriptor_length - len(out))
        if self.encode_crop:
            cx, cy, cw, ch = crop or FULL_CROP
            out += [self.point(cx, cy), self.point(cx + cw, cy + ch)]
        assert len(out) == self.tokens and all(0 <= t < self.no_tokens for t in out)
        return out


def _intersection_area(a: Box, b: Box) -> float:
    x_overlap = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    y_overlap = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return x_overlap * y_overlap


def _rescale(bbox: Box, crop: Box) -> Box:
    def clamp(x: float) -> float:
        return max(min(x, 1.0), 0.0)

    x0 = clamp((bbox[0] - crop[0]) / crop[2])
    y0 = clamp((bbox[1] - crop[1]) / crop[3])
    return x0, y0, min(bbox[2] / crop[2], 1 - x0), min(bbox[3] / crop[3], 1 - y0)
