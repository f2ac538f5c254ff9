"""Reading condition images (untrusted files) and writing result images (atomically)."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy.errors import InputError, TooLargeError, UnsupportedInputError, shown
from vqdeploy.files import atomic_write_many, read_regular
from vqdeploy.limits import DECODE_PIXELS, check_pixels

MAX_PIXELS = DECODE_PIXELS  # beyond this a PNG is treated as a decompression bomb
MAX_IMAGE_FILE_BYTES = 256 << 20  # an image file read into memory (its pixels are bounded separately)
# PIL modes a condition image may have (others, e.g. CMYK or YCbCr, are refused rather than guessed at)
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "F")


def read_input_file(path: Path, what: str = "input", max_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """The bytes of a user's input file: opened without blocking (a FIFO does not hang), a regular file,
    bounded; one line naming what it is otherwise (a directory, a FIFO, a character device such as
    ``/dev/zero``, ...)."""
    return read_regular(path, what, max_bytes, InputError, TooLargeError)


def _open(path: Path, budget: int | None = None, remedy: str | None = None) -> Any:
    """Read and decode ``path``; ``budget`` (pixels) is checked on the header, before decoding."""
    return decode_image(io.BytesIO(read_input_file(path, "input image")), str(path), budget, remedy)


def decode_image(source: Any, what: str, budget: int | None = None, remedy: str | None = None) -> Any:
    """Decode a path or a binary file object (e.g. ``io.BytesIO`` of an upload: nothing touches the disk)
    into a PIL image; ``budget`` (pixels) and the decompression-bomb limit are checked on the header."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            if img.width * img.height > MAX_PIXELS:
                raise TooLargeError(f"{what}: {img.width}x{img.height} is too large (limit {MAX_PIXELS} pixels)")
            if budget is not None:
                check_pixels(img.height, img.width, budget, what, remedy)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLargeError(f"{what}: refused: the image is a decompression bomb (over {MAX_PIXELS} pixels)") from None
    except UnidentifiedImageError:
        raise InputError(f"{what}: not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{what}: corrupt image ({e})") from None
    return img


def parse_size(text: str | None, option: str = "--size") -> tuple[int, int] | None:
    """'S' (a square) or 'WxH' (width x height, as image tools write it) -> (height, width)."""
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise InputError(f"{option} must be S or WxH (e.g. 256 or 512x256), got {text!r}")
    w, h = parts
    if w <= 0 or h <= 0:
        raise InputError(f"{option} must be positive, got {text!r}")
    return h, w


def load_condition(source: Path | bytes, preprocessing: dict[str, Any], size: tuple[int, int] | None,
                   budget: int | None = None, note: Callable[[str], None] | None = None,
                   what: str | None = None, remedy: str | None = None) -> np.ndarray:
    """The cond encoder's input for one image file (a path, or its bytes: an upload): (1,H,W) int64 labels or
    (1,C,H,W) fp32 in [-1,1]. ``budget`` (pixels) bounds the image decoded (checked on its header);
    ``size`` (H, W): resize to it (the trained size unless --size asks for another); None keeps the image's
    own size. ``note`` hears about resizing."""
    if isinstance(source, bytes):
        what = what or "condition"
        img = decode_image(io.BytesIO(source), what, budget, remedy)
    else:
        what = what or str(source)
        img = _open(source, budget, remedy)
    if img.mode not in IMAGE_MODES:
        raise UnsupportedInputError(f"{what}: image mode {img.mode} is not accepted; use one of "
                                    f"{', '.join(IMAGE_MODES)} (e.g. a greyscale, RGB or palette PNG)")
    return prepare_condition(img, preprocessing, size, what, note)


def prepare_condition(img: Any, preprocessing: dict[str, Any], size: tuple[int, int] | None, what: str,
                      note: Callable[[str], None] | None = None) -> np.ndarray:
    """``load_condition`` for a decoded PIL image; ``what`` names it in messages."""
    from PIL import Image

    path = what
    if note is not None and size is not None and (img.height, img.width) != size:
        stretch = abs(img.width / img.height - size[1] / size[0]) > 0.01
        note(f"note: {what} is {img.width}x{img.height}; resized to {size[1]}x{size[0]}"
             + (" (the aspect ratio changes)" if stretch else ""))
    kind = preprocessing["kind"]
    if kind == "onehot":
        if img.mode not in ("L", "P", "I", "I;16"):
            raise InputError(f"{path}: a segmentation must be a label PNG (mode L, P or I holding class ids), "
                             f"got mode {img.mode}")
        if size is not None and (img.height, img.width) != size:
            img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
        labels = np.asarray(img, dtype=np.int64)
        n = int(preprocessing["num_classes"])
        if labels.min() < 0 or labels.max() >= n:
            raise InputError(f"{path}: class ids must be in 0..{n - 1}, found {labels.min()}..{labels.max()}")
        return labels[None]
    if kind == "grey":
        if img.mode in ("I", "I;16", "F"):  # depth maps: normalised to [-1,1] as taming does
            arr = np.asarray(img, dtype=np.float32)
            if not np.isfinite(arr).all():
                raise InputError(f"{path}: the image holds NaN or infinite values")
            if size is not None and arr.shape != size:
                arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.Resampling.BICUBIC))
            lo, hi = float(arr.min()), float(arr.max())
            return (2.0 * (arr - lo) / max(hi - lo, 1e-8) - 1.0)[None, None].astype(np.float32)
        if img.mode not in ("L", "1", "P", "LA", "RGBA") and note is not None:  # RGBA: what a drawing app saves
            note(f"note: {what} is {_article(img.mode)} {img.mode} image; converted to greyscale as this model expects")
        colour = _colourful_fraction(img) if preprocessing.get("background") == "light" else 0.0
        img = img.convert("L")
    elif kind == "rgb":
        img = img.convert("RGB")
    else:
        raise InputError(f"unsupported condition preprocessing '{kind}'")
    if size is not None and (img.height, img.width) != size:
        img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    if preprocessing.get("background") == "light" and note is not None:
        warning = sketch_warning(np.asarray(img, dtype=np.uint8), colour) if img.mode == "L" else None
        if warning:
            note(f"warning: {what} {warning}")
    arr = arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None]
    return np.ascontiguousarray(arr)


# What a sketch for a "dark strokes on a light background" model looks like, measured on the demo's sketches and
# on the sketch pad's drawings (64x64, after the resize): a light background (>= 97% of pixels light or dark, the
# strokes under 40%), no colour. A photograph or a filled picture has mid-tones; a blank page has no stroke.
LIGHT, DARK = 192, 128  # grey levels: background at or above LIGHT, a stroke below DARK
MAX_MIDTONES = 0.15  # fraction of pixels between DARK and LIGHT (anti-aliased stroke edges: up to ~8%)
MAX_COLOURFUL = 0.10  # fraction of pixels whose channels differ by more than COLOUR_SPREAD
COLOUR_SPREAD = 48


def _article(mode: str) -> str:
    """"an RGB", "a PA": the article of a mode name read letter by letter."""
    return "an" if mode[:1] in "AEFHILMNORSX" else "a"


def _colourful_fraction(img: Any) -> float:
    """The fraction of an RGB(A)/palette image's pixels that are clearly coloured (not grey)."""
    if img.mode not in ("RGB", "RGBA", "P", "PA"):
        return 0.0
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > COLOUR_SPREAD).mean())


def sketch_warning(grey: np.ndarray, colourful: float = 0.0) -> str | None:
    """Why a greyscale (H,W) uint8 image is not what a sketch model takes, or None: mostly dark (inverted),
    blank (nothing drawn), or a photograph / coloured picture rather than dark strokes on a light background."""
    midtones = float(((grey >= DARK) & (grey < LIGHT)).mean())
    if colourful >= MAX_COLOURFUL or midtones > MAX_MIDTONES:
        why = f"{colourful:.0%} of its pixels are coloured" if colourful >= MAX_COLOURFUL else \
            f"{midtones:.0%} of its pixels are mid-tones"
        return (f"looks like a photograph or a painted picture, not a line drawing ({why}); this model's inputs are "
                "dark strokes on a light background: the samples will not follow it")
    if float(grey.mean()) < 127.5:
        return ("is mostly dark; this model's inputs are dark strokes on a light background "
                "(inverted input gives unrelated images)")
    if not (grey < DARK).any():
        return "is blank (no dark stroke): the samples follow nothing drawn; draw dark strokes on a light background"
    return None


def as_condition(x: Any, preprocessing: dict[str, Any], size: tuple[int, int] | None, budget: int,
                 note: Callable[[str], None] | None = None, remedy: str | None = None) -> np.ndarray:
    """A condition as a library user has it: a file path, a PIL image, a (H,W) / (H,W,C) uint8 or integer
    label array (preprocessed like a file), or an already preprocessed float array (returned as is)."""
    from PIL import Image

    if isinstance(x, (str, Path)):
        return load_condition(Path(x), preprocessing, size, budget, note, remedy=remedy)
    if isinstance(x, (bytes, bytearray)):
        return load_condition(bytes(x), preprocessing, size, budget, note, remedy=remedy)
    if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == 4:
        return x
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3) or x.dtype.kind not in "uib" or x.shape[-1] > 4 and x.ndim == 3:
            raise InputError(f"condition array of shape {x.shape} and dtype {x.dtype}: expected a (H,W) or (H,W,C) "
                             "uint8 image, a (H,W) integer label map, or a preprocessed (B,C,H,W) float array")
        if preprocessing["kind"] == "onehot":
            x = Image.fromarray(x.astype(np.int32), mode="I")
        else:
            x = Image.fromarray(x.astype(np.uint8))
    if not isinstance(x, Image.Image):
        raise InputError(f"unsupported condition type {type(x).__name__}: pass a path, a PIL image or a numpy array")
    check_pixels(x.height, x.width, budget, "the condition image", remedy)
    return prepare_condition(x, preprocessing, size, "the condition image", note)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N,C,H,W) in [-1,1] -> (N,H,W,C) uint8."""
    x = np.clip((images.astype(np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def grid_image(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """(N,H,W,C) uint8 -> one (rows*H, cols*W, C) image."""
    n, h, w, c = images.shape
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        out[r * h : (r + 1) * h, k * w : (k + 1) * w] = im
    return out


# what ``run --out`` writes, by the name's extension (case-insensitive): PIL format and its save options
# (JPEG at quality 95 without chroma subsampling; WebP lossless, so it holds exactly the sampled pixels)
OUTPUT_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".webp": ("WEBP", {"lossless": True}),
}


def output_format(path: Path, option: str = "--out") -> str:
    """The image format ``path``'s extension names (PNG, JPEG, WEBP); one line naming the choices otherwise
    (no extension, or one we do not write: the file would not hold what its name says)."""
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        choices = ", ".join(OUTPUT_FORMATS)
        what = "has no extension" if not path.suffix else f"ends in {path.suffix}, a format vqdeploy does not write"
        raise InputError(f"{option} {shown(path)} {what}: name the image format with one of {choices} "
                         f"(e.g. {path.with_suffix('.png').name})")
    return fmt[0]


def image_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """(H,W,C) uint8 -> the file contents of an image in ``fmt`` (PNG, JPEG or WEBP)."""
    from PIL import Image

    options = next((o for f, o in OUTPUT_FORMATS.values() if f == fmt), None)
    if options is None:
        raise InputError(f"unsupported image format {fmt}")
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format=fmt, **options)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    """(H,W,C) uint8 -> PNG file contents."""
    return image_bytes(array, "PNG")


def write_images(images: dict[Path, np.ndarray]) -> None:
    """Each in the format its extension names (``output_format``); all of them or none (``atomic_write_many``)."""
    atomic_write_many({p: image_bytes(a, output_format(p)) for p, a in images.items()})


def write_pngs(images: dict[Path, np.ndarray]) -> None:
    """All of them or none (see ``atomic_write_many``)."""
    atomic_write_many({p: png_bytes(a) for p, a in images.items()})


def output_paths(out: Path, n: int, grid: bool) -> list[Path]:
    """The files ``run --out OUT`` writes: OUT, or NAME-0.EXT, NAME-1.EXT, ... (the format checked first)."""
    if os.path.isdir(out) and not os.path.islink(out):  # what is in the way before what the name lacks (as run)
        raise InputError(f"--out: {shown(out)} is a directory; name a file (e.g. {shown(out / 'sample.png')})")
    output_format(out)
    if grid or n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]
