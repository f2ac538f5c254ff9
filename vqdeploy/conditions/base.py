"""What a conditioning kind is at run time: one class that owns its path, so nothing else tests kind strings.

A kind declares its manifest entry (``schema``, checked before anything indexes it) and parses it into an
instance (``from_manifest``). The instance turns what a user hands over into the kind's typed value
(``read``: a file for ``run``, a Python value for the library, uploaded bytes for ``serve``; one entry point
for all three, so the same input gets the same answer everywhere), makes the condition tokens of that
value (``condition_tokens``), says which image grid it implies and which sizes it takes, and gives seeded parity
inputs and a picture for reports. The export side (which PyTorch module of a checkpoint is which kind, its
encoder graph) belongs to the model family (``vqdeploy.families``): this package never imports PyTorch.

Adding a kind: subclass ``Condition``, decorate it with ``@register``, import its module in
``vqdeploy/conditions/__init__.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import numpy as np

from vqdeploy.errors import ArtifactError, InputError
from vqdeploy.schema import Rule

if TYPE_CHECKING:
    from vqdeploy.artifacts.manifest import VQStage
    from vqdeploy.runtime.backends.base import Backend

Log = Callable[[str], None]


# --- the typed values (one per kind) ---------------------------------------------------------------
class ConditionInput:
    """A condition as its kind reads it: what ``Condition.read`` returns and ``Condition.condition_tokens`` takes."""


@dataclass(frozen=True, eq=False)
class ImageInput(ConditionInput):
    """A preprocessed condition image: (1,C,H,W) float32 in [-1,1], or (1,H,W) int64 class ids."""

    array: np.ndarray


@dataclass(frozen=True)
class ClassId(ConditionInput):
    """A class label (``--class``, ``class_id=``, the ``class_id`` field)."""

    value: int


@dataclass(frozen=True)
class NoInput(ConditionInput):
    """Nothing: the condition of an unconditional model."""


@dataclass(frozen=True, eq=False)
class CoordinateInput(ConditionInput):
    """A [0,1] raster-position map (1,1,H,W) float32."""

    array: np.ndarray


@dataclass(frozen=True, eq=False)
class LayoutInput(ConditionInput):
    """An object layout as its tokens (1, tokens) int64 (built from a scene by the kind)."""

    tokens: np.ndarray


# --- how an input is read ----------------------------------------------------------------------------
_OPTIONS = {  # what users know an option by: (CLI, library, HTTP)
    "input": ("INPUT", "the condition", "the condition file part"),
    "class": ("--class", "class_id", "class_id"),
    "size": ("--size", "size", "size"),
}


@dataclass(frozen=True)
class Reading:
    """How a condition is read: the image to sample (``size`` (H, W) pixels, None: the trained size), the
    pixel budgets, where notes go, and who asks (``via``: "cli", "library" or "http"), so that messages name
    the option the user can change."""

    size: tuple[int, int] | None = None
    budget: int = 1 << 62  # pixels an image file may have (it is resized to ``size``)
    log: Log | None = None
    via: str = "cli"
    max_pixels: int = 1 << 62  # pixels a condition used at its own size (a preprocessed array) may have

    def option(self, name: str) -> str:
        return _OPTIONS[name][("cli", "library", "http").index(self.via)]

    def too_large(self) -> str:
        """What to do about a condition image over ``budget`` pixels, in the asker's terms."""
        side = math.isqrt(self.budget)
        return {"cli": "pass --max-pixels N to raise it",
                "library": "pass max_pixels=N to raise it",
                "http": f"send an image of at most {self.budget} pixels (e.g. {side}x{side}; it is resized to the "
                        "model's size anyway); the server's --max-pixels sets this limit"}[self.via]

    def note(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


# --- the kind ------------------------------------------------------------------------------------------
class Condition:
    """One model's conditioning: the parsed ``model.conditioning`` entry of its manifest."""

    kind: ClassVar[str]
    schema: ClassVar[Rule]  # the manifest entry (``vqdeploy.schema`` rules), checked before ``from_manifest``
    what: ClassVar[str]  # what the model is conditioned on, in messages ("an image", "a class label")
    value_type: ClassVar[type[ConditionInput]] = NoInput  # what ``read`` returns
    graphs: ClassVar[tuple[str, ...]] = ()  # graphs it runs besides the transformer and the decoder
    picture_width: ClassVar[int] = 96  # how wide the parity report shows ``picture``
    draws_layout: ClassVar[bool] = False  # ``run --save-layout`` applies
    input_name: ClassVar[str] = "file"  # the input ``claims`` recognises, in messages ("scene file")

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.tokens = int(entry["tokens"])  # condition tokens per sample

    # --- manifest ------------------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any], where: str) -> Condition:
        """The kind of a schema-valid entry; ArtifactError naming ``where`` when its numbers disagree."""
        return cls(entry)

    def check_model(self, vocab_size: int, where: str) -> None:
        """What the entry says against the transformer (ids within its vocabulary)."""

    @staticmethod
    def fail(where: str, message: str) -> NoReturn:
        raise ArtifactError(f"{where}: {message} (re-export)")

    @property
    def summary(self) -> str:
        """The model, in messages: "conditioned on an image"."""
        return f"conditioned on {self.what}"

    @property
    def classes(self) -> int | None:
        """How many class ids the model takes (None: it takes none)."""
        return None

    # --- input: one entry point ------------------------------------------------------------------------
    def read(self, raw: Any, reading: Reading = Reading()) -> ConditionInput:
        """What the user handed over -> this kind's value: a path (``run``'s INPUT, or the library's), bytes (an
        upload), a ``ClassId``, None (nothing given), a Python value (a PIL image, an array, a mapping ...), or
        a value of this kind already read (returned as it is)."""
        if isinstance(raw, self.value_type) and type(raw) is not ClassId:
            return raw
        if isinstance(raw, ClassId):
            return self.read_class(raw.value, reading)
        if isinstance(raw, ConditionInput):
            raise InputError(f"this model is {self.summary}; got a {type(raw).__name__}")
        if isinstance(raw, (str, Path)):
            path = Path(raw)
            for other in CONDITIONS.values():
                if other is not type(self) and other.claims(path) and not self.claims(path):
                    raise InputError(f"{path}: a {other.input_name} is for models conditioned on {other.what}; "
                                     f"this model is {self.summary}")
            return self.read_file(path, reading)
        if isinstance(raw, (bytes, bytearray, memoryview)):
            return self.read_bytes(bytes(raw), reading)
        if raw is None:
            return self.read_nothing(reading)
        return self.read_value(raw, reading)

    @classmethod
    def claims(cls, path: Path) -> bool:
        """Whether ``path`` is obviously this kind's input (a scene file), for a clear error when it is
        given to a model of another kind."""
        return False

    def read_file(self, path: Path, reading: Reading) -> ConditionInput:
        raise InputError(f"this model is {self.summary}: it takes no {reading.option('input')}")

    def read_bytes(self, data: bytes, reading: Reading) -> ConditionInput:
        raise InputError(f"this model is {self.summary}: it takes no condition upload")

    def read_nothing(self, reading: Reading) -> ConditionInput:
        """Nothing given: a kind conditioned on nothing (its ``value_type`` is ``NoInput``) takes that."""
        if self.value_type is NoInput:
            return NoInput()
        raise InputError(f"this model is {self.summary}: pass {reading.option('input')}")

    def read_value(self, value: Any, reading: Reading) -> ConditionInput:
        raise InputError(f"this model is {self.summary}: a {type(value).__name__} is not a condition it takes")

    def read_class(self, class_id: int, reading: Reading) -> ConditionInput:
        raise InputError(f"{reading.option('class')} is for class-conditional models; this model is {self.summary}")

    # --- classifier-free guidance ---------------------------------------------------------------------
    def null_tokens(self) -> np.ndarray | None:
        """(1, tokens) int64: the null condition a guided sample's second row is conditioned on, or None where
        the model has none (it cannot be guided)."""
        return None

    def check_guidance(self, guided: bool, option: str = "cfg_scale") -> None:
        """InputError when guidance is asked of a model without a null condition (``option`` names what the user
        set: ``--cfg-scale``, ``cfg_scale``)."""
        if guided and self.null_tokens() is None:
            raise InputError(f"{option}: this model ({self.summary}) has no null condition, so it cannot be "
                             "guided (classifier-free guidance needs a model trained with one, e.g. LlamaGen's "
                             "class-to-image GPTs)")

    # --- tokens and sizes ----------------------------------------------------------------------------
    def condition_tokens(self, backend: Backend, value: ConditionInput, batch: int) -> np.ndarray:
        """(B,h,w) condition tokens on a grid, or (B,n), for ``batch`` samples of one condition."""
        raise NotImplementedError

    def image_grid(self, cond_tokens: np.ndarray, first: VQStage) -> tuple[int, int] | None:
        """The image latent grid a spatial condition implies (None: the kind fixes none)."""
        return None

    def check_size(self, size: tuple[int, int], first: VQStage) -> None:
        """A --size this kind cannot sample."""

    def size_multiple(self) -> int:
        """--size must be a multiple of this (besides the first stage's factor)."""
        return 1

    # --- reports ---------------------------------------------------------------------------------------
    def parity_input(self, rng: np.random.Generator, batch: int, first: VQStage, image: np.ndarray) -> np.ndarray | None:
        """A seeded condition of ``batch`` rows, as the graphs take it (``image``: the first-stage parity input)."""
        return None

    def as_value(self, batch_input: np.ndarray | None) -> ConditionInput:
        """A ``parity_input`` (its rows, one condition each) as this kind's value."""
        return NoInput()

    def picture(self, value: ConditionInput, size: tuple[int, int] = (256, 256)) -> np.ndarray | None:
        """(H,W,C) uint8: the condition as people look at it, or None."""
        return None

    def text(self) -> str:
        """The condition in words where there is no picture."""
        return self.kind


CONDITIONS: dict[str, type[Condition]] = {}  # every registered kind by name (``registry.register``)


def repeat_rows(grid: np.ndarray, batch: int) -> np.ndarray:
    """One condition for every sample of a batch."""
    return np.repeat(grid, batch, axis=0) if grid.shape[0] == 1 and batch > 1 else grid
