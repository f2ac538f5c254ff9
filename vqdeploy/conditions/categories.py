"""Category names of the data sets upstream's scene models were trained on, as category numbers.

COCO (``taming.data.annotated_objects_coco``): upstream loads the categories of
``instances_*2017.json`` (80 "things") and ``stuff_*2017.json`` (92 "stuff", of which it drops
"other"), keys them by ``str(id)`` and numbers them in the *string* order of those ids
(``setup_category_id_and_number``: "1", "10", "100", "101", ..., "99"). Without an allow list or a
category mapping that gives 171 numbered categories; the ids and names are COCO 2017's published
ones. Open Images numbers its categories after an allow list and a merge table
(``open_images_helper``) that we do not reproduce: its names are not supported (give numbers).
"""

from __future__ import annotations

COCO_THINGS = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple", 54: "sandwich",
    55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair",
    63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop",
    74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster",
    81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}
# COCO-Stuff 2017: ids 92..182 in this order (183 "other" is dropped by upstream's load_categories)
COCO_STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)


def coco_names() -> list[str]:
    """Category number -> name, as upstream numbers COCO without an allow list (171 names)."""
    by_id = {**COCO_THINGS, **{92 + i: name for i, name in enumerate(COCO_STUFF)}}
    return [by_id[int(i)] for i in sorted(str(i) for i in by_id)]


def category_names(dataset: str | None) -> list[str] | None:
    """The names of a data set whose numbering we know, indexed by category number."""
    return coco_names() if dataset == "coco" else None
